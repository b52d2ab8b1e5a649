-- Create an entity hash unless it exists (a retried create of the same request is a no-op), and
-- keep the request record of the create: its request id, used again for another request on the
-- entity it made (an add, a pay, an addItem), is refused as reused (adjust.lua, add_item.lua).
-- KEYS[1] entity hash, KEYS[2] the request record (same slot)
-- ARGV[1] request record ttl (s), ARGV[2..] pairs of field, value.
-- Returns 1 if created, 0 if it existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SET', KEYS[2], 'OK:0:create', 'EX', ARGV[1])
return 1
