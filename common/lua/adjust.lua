-- Add a signed delta to one numeric field of an existing entity, keeping it in [0, limit].
-- KEYS[1] entity hash, KEYS[2] request record (same slot; makes a client retry a no-op)
-- ARGV[1] field, ARGV[2] delta, ARGV[3] limit, ARGV[4] request record ttl (s)
-- Returns {status, value}: status OK | UNKNOWN | NEGATIVE | OVERFLOW.
local done = redis.call('GET', KEYS[2])
if done then
  local sep = string.find(done, ':', 1, true)
  return {string.sub(done, 1, sep - 1), tonumber(string.sub(done, sep + 1))}
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local status, value
if not current then
  status, value = 'UNKNOWN', 0
else
  value = tonumber(current) + tonumber(ARGV[2])
  if value < 0 then
    status, value = 'NEGATIVE', tonumber(current)
  elseif value > tonumber(ARGV[3]) then
    status, value = 'OVERFLOW', tonumber(current)
  else
    status = 'OK'
    value = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
  end
end
redis.call('SET', KEYS[2], status .. ':' .. string.format('%d', value), 'EX', ARGV[4])
return {status, value}
