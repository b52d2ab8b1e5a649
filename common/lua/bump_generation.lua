-- Move a consumer group to its next generation, unless another member already did.
-- KEYS[1] the generation counter; ARGV[1] the generation the caller found wedged.
-- Returns the current generation after the call.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current == tonumber(ARGV[1]) then
  current = redis.call('INCR', KEYS[1])
end
return current
