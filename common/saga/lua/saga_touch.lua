-- The sweeper claims a re-send: only if the saga has not moved since it was read.
-- KEYS[1] the entity hash
-- ARGV[1] saga id, ARGV[2] status, ARGV[3] step, ARGV[4] the saga_updated that was read,
-- ARGV[5] now (ms)
-- Returns the number of re-sends so far (after this one), or 0 if the saga moved meanwhile.
local h = redis.call('HMGET', KEYS[1], 'saga_id', 'saga_status', 'saga_step', 'saga_updated')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[3] ~= ARGV[3] or h[4] ~= ARGV[4] then
  return 0
end
redis.call('HSET', KEYS[1], 'saga_updated', ARGV[5])
return redis.call('HINCRBY', KEYS[1], 'saga_resends', 1)
