-- batch_init: replace an entity by fresh fields, stamped with the moment of the reset on this
-- master's clock (ms) in the same step: a saga that began at or before it is fenced off the
-- entity (take.lua, restore.lua), so nothing it took before comes back onto the new balance and
-- nothing of the new balance goes to it. The saga's own records may outlive the reset: harmless.
-- KEYS[1] entity hash; ARGV field, value pairs
-- Returns the stamp.
local now = redis.call('TIME')
local epoch = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch), unpack(ARGV))
return epoch
