-- Take or renew the lease on one shard of the in-flight index and, when this worker holds it,
-- read the shard's due entries: a sweeper's whole look at a shard in one call.
-- KEYS[1] the lease key, KEYS[2] the index shard (same slot)
-- ARGV[1] worker id, ARGV[2] lease length (ms), ARGV[3] now (ms), ARGV[4] most entries
-- Returns false when another worker holds the lease, else {entity, score, entity, score, ...}.
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return false
end
return redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'WITHSCORES', 'LIMIT', 0, ARGV[4])
