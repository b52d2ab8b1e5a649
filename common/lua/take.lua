-- A saga step takes `amount` from one numeric field of an entity, at most once per saga.
-- KEYS[1] entity hash, KEYS[2] the saga's operation record on it (same slot)
-- ARGV[1] field, ARGV[2] amount, ARGV[3] record ttl (s)
-- The record is the dedup entry and the stored reply: a redelivery returns it unchanged.
--   T:<amount> taken   S short (not enough)   U unknown entity   X restored or refused for good
local done = redis.call('GET', KEYS[2])
if done then
  return done
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local result
if not current then
  result = 'U'
elseif tonumber(current) < tonumber(ARGV[2]) then
  result = 'S'
else
  if tonumber(ARGV[2]) > 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[1], '-' .. ARGV[2])
  end
  result = 'T:' .. ARGV[2]
end
redis.call('SET', KEYS[2], result, 'EX', ARGV[3])
return result
