-- Take or renew the lease on one shard of the in-flight index.
-- KEYS[1] the lease key, ARGV[1] worker id, ARGV[2] lease length (ms)
-- Returns 1 when this worker holds the lease.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
