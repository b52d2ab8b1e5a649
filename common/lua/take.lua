-- A saga step takes `amount` from one numeric field of an entity, at most once per saga.
-- KEYS[1] entity hash, KEYS[2] the saga's operation record on it (same slot)
-- ARGV[1] field, ARGV[2] amount, ARGV[3] record ttl (s), ARGV[4] when the saga began (ms)
-- The record is the dedup entry and the stored reply: a redelivery returns it unchanged, after a
-- reset too (it takes nothing then, and a T: record older than the reset holds nothing).
--   T:<amount> taken   S short (not enough)   U unknown entity   X restored or refused for good
--   F fenced: the entity was reset (reset.lua) at or after the saga began; the saga never holds
--     anything of it (what it took before the reset went with the old balance)
local done = redis.call('GET', KEYS[2])
if done then
  return done
end
local h = redis.call('HMGET', KEYS[1], ARGV[1], 'epoch')
local epoch = tonumber(h[2] or '0')
if epoch > 0 and tonumber(ARGV[4]) <= epoch then
  redis.call('SET', KEYS[2], 'F', 'EX', ARGV[3])
  return 'F'
end
local result
if not h[1] then
  result = 'U'
elseif tonumber(h[1]) < tonumber(ARGV[2]) then
  result = 'S'
else
  if tonumber(ARGV[2]) > 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[1], '-' .. ARGV[2])
  end
  result = 'T:' .. ARGV[2]
end
redis.call('SET', KEYS[2], result, 'EX', ARGV[3])
return result
