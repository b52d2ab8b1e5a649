-- batch_init: replace an entity by fresh fields, stamped with the moment of the reset on this
-- master's clock (ms) in the same step: a saga that began at or before it is fenced off the
-- entity (take.lua, restore.lua), so nothing it took before comes back onto the new balance and
-- nothing of the new balance goes to it. The saga's own records may outlive the reset: harmless.
-- Once per batch_init request: a copy of the request that comes again (a worker frozen with it
-- past the gateway's timeout resumes after the gateway's retry did it, and entities have been
-- used since) finds the entity reset by it already and changes nothing, and so does one that
-- finds it reset by a batch_init of a higher rank (claim.lua), which came after it. (A reset
-- called in-process without a request id has no rank, and resets.)
-- KEYS[1] entity hash; ARGV[1] the batch_init's request: its rank, '#', its id
-- ARGV[2..] field, value pairs
-- Returns the stamp (the one of the entity's last reset, when it leaves it alone).
local function rank(by)
  return tonumber(string.match(by or '', '^(%d+)#')) or 0
end
local h = redis.call('HMGET', KEYS[1], 'reset_by', 'epoch')
local mine = rank(ARGV[1])
if h[1] == ARGV[1] or (mine > 0 and rank(h[1]) > mine) then
  return tonumber(h[2])
end
local now = redis.call('TIME')
local epoch = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'epoch', string.format('%d', epoch), 'reset_by', ARGV[1],
  unpack(ARGV, 2))
return epoch
