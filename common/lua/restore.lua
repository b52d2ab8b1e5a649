-- Compensation of take.lua: gives back what the saga took, once. If the saga took nothing yet,
-- leaves a tombstone (X) so that a late take for the same saga is refused. A saga the entity's
-- last reset fenced off (see take.lua) gets nothing back: what it took went with the old balance.
-- KEYS[1] entity hash, KEYS[2] the saga's operation record; ARGV[1] field, ARGV[2] record ttl (s),
-- ARGV[3] when the saga began (ms)
-- Returns the record's state before this call (nil when there was none).
local done = redis.call('GET', KEYS[2])
local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch') or '0')
if epoch > 0 and tonumber(ARGV[3]) <= epoch then
  redis.call('SET', KEYS[2], 'F', 'EX', ARGV[2])
  return done
end
if done and string.sub(done, 1, 2) == 'T:' and tonumber(string.sub(done, 3)) > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], string.sub(done, 3))
end
if (not done) or string.sub(done, 1, 2) == 'T:' then
  redis.call('SET', KEYS[2], 'X', 'EX', ARGV[2])
end
return done
