-- Compensation of take.lua: gives back what the saga took, once. If the saga took nothing yet,
-- leaves a tombstone (X) so that a late take for the same saga is refused.
-- KEYS[1] entity hash, KEYS[2] the saga's operation record; ARGV[1] field, ARGV[2] record ttl (s)
-- Returns the record's state before this call (nil when there was none).
local done = redis.call('GET', KEYS[2])
if done and string.sub(done, 1, 2) == 'T:' and tonumber(string.sub(done, 3)) > 0 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], string.sub(done, 3))
end
if (not done) or string.sub(done, 1, 2) == 'T:' then
  redis.call('SET', KEYS[2], 'X', 'EX', ARGV[2])
end
return done
