-- Create an entity hash unless it exists (a retried create of the same request is a no-op).
-- KEYS[1] entity hash; ARGV pairs of field, value. Returns 1 if created, 0 if it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
