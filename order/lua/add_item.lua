-- Append a line to an order that is neither paid nor being checked out, within the order's
-- bound (every message its checkout may send must fit in one Kafka record).
-- KEYS[1] the order hash, KEYS[2] request record (makes a client retry a no-op)
-- ARGV[1] item id, ARGV[2] quantity, ARGV[3] unit price, ARGV[4] total cost limit,
-- ARGV[5] request record ttl (s), ARGV[6] most lines, ARGV[7] most bytes of lines (as stored)
-- Returns {status, total_cost}: OK | UNKNOWN | PAID | BUSY | OVERFLOW | TOO_BIG, or REUSED
-- when the request id already asked for another line here (the record keeps
-- status:total:quantity:item).
local line = ARGV[2] .. ':' .. ARGV[1]
local done = redis.call('GET', KEYS[2])
if done then
  local status, total, asked = string.match(done, '^([^:]*):([^:]*):?(.*)$')
  if asked ~= '' and asked ~= line then
    return {'REUSED', 0}
  end
  return {status, tonumber(total)}
end
local h = redis.call('HMGET', KEYS[1], 'user_id', 'paid', 'saga_status', 'items', 'total_cost')
local status, total = 'OK', tonumber(h[5] or '0')
if not h[1] then
  status, total = 'UNKNOWN', 0
elseif h[2] == '1' then
  status = 'PAID'
elseif h[3] == 'running' or h[3] == 'compensating' then
  status = 'BUSY'
else
  local added = tonumber(ARGV[2]) * tonumber(ARGV[3])
  local items = cjson.decode(h[4] or '[]')
  items[#items + 1] = {ARGV[1], tonumber(ARGV[2])}
  local encoded = cjson.encode(items)
  if total + added > tonumber(ARGV[4]) then
    status = 'OVERFLOW'
  elseif #items > tonumber(ARGV[6]) or #encoded > tonumber(ARGV[7]) then
    status = 'TOO_BIG'
  else
    total = total + added
    redis.call('HSET', KEYS[1], 'items', encoded, 'total_cost', string.format('%d', total))
  end
end
redis.call('SET', KEYS[2], status .. ':' .. string.format('%d', total) .. ':' .. line, 'EX', ARGV[5])
return {status, total}
