-- Add a signed delta to one numeric field of an existing entity, keeping it in [0, limit] for
-- good. The entity's ceiling (what was added to it, less what was subtracted) bounds the field
-- plus every amount sagas took and may still give back (restore.lua adds without a check), so
-- an increase may not lift the ceiling past the limit; a decrease is never refused for it.
-- KEYS[1] entity hash, KEYS[2] request record (same slot; makes a client retry a no-op)
-- ARGV[1] field, ARGV[2] delta, ARGV[3] limit, ARGV[4] request record ttl (s)
-- Returns {status, value}: status OK | UNKNOWN | NEGATIVE | OVERFLOW, or REUSED when the
-- request id already did another delta here (the record keeps status:value:delta).
local done = redis.call('GET', KEYS[2])
if done then
  local status, value, asked = string.match(done, '^([^:]*):([^:]*):?(.*)$')
  if asked ~= '' and asked ~= ARGV[2] then
    return {'REUSED', 0}
  end
  return {status, tonumber(value)}
end
local h = redis.call('HMGET', KEYS[1], ARGV[1], 'ceiling')
local status, value
if not h[1] then
  status, value = 'UNKNOWN', 0
else
  local current, delta = tonumber(h[1]), tonumber(ARGV[2])
  local ceiling = tonumber(h[2] or h[1])  -- an entity older than the ceiling: its balance
  value = current + delta
  if value < 0 then
    status, value = 'NEGATIVE', current
  elseif delta > 0 and ceiling + delta > tonumber(ARGV[3]) then
    status, value = 'OVERFLOW', current
  else
    status = 'OK'
    value = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
    redis.call('HSET', KEYS[1], 'ceiling', string.format('%d', ceiling + delta))
  end
end
redis.call('SET', KEYS[2], status .. ':' .. string.format('%d', value) .. ':' .. ARGV[2], 'EX', ARGV[4])
return {status, value}
