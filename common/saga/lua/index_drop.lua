-- Drop an entity from the in-flight index only if its entry was not renewed since it was read.
-- KEYS[1] the index shard, ARGV[1] entity id, ARGV[2] the score that was read
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
