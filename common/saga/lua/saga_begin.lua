#!lua flags=allow-cross-slot-keys
-- Start a saga on an entity, unless it is done or a saga of it is already live.
-- KEYS[1] the entity hash (holds the saga's state in saga_* fields)
-- ARGV[1] mode: 'check' answers without changing anything, 'start' starts, 'start:<ms>' starts
--         only before that moment on this master's clock, else {'LATE'}: the bound of a request
--         whose gateway may have given up on it by then (common/http.py, gateway_start_by),
--         checked where the saga would begin, however long the call took to get here
-- ARGV[2] entity id, ARGV[3] nonce, ARGV[4] now (ms), ARGV[5] deadline (ms), ARGV[6] done field,
-- ARGV[7] '' or a shard of the in-flight index kept by this same master (another slot, hence an
--         argument and the flag above; a shard elsewhere fails the call). Given, a started saga
--         is registered in it in this same step (never a live saga outside the index), with the
--         entry's score kept in saga_indexed so that the saga's end can remove exactly it,
-- ARGV[8] that entry's score,
-- ARGV[9] the largest snapshot (bytes) a saga may start from: every message it may send must fit
--         in one Kafka record (SagaDefinition.max_snapshot_bytes),
-- ARGV[10] '1' when the saga asks for every step at once (a concurrent saga), '0' one by one,
-- ARGV[11..] entity fields copied into the saga's snapshot (its commands are built from it)
-- Returns {'UNKNOWN'} | {'DONE', saga_id} | {'JOINED', saga_id} | {'READY'}
--       | {'TOO_BIG', snapshot bytes} | {'LATE'} | {'STARTED', saga_id, snapshot}
local mode, start_by = string.match(ARGV[1], '^(%a+):?(%d*)$')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'UNKNOWN'}
end
local h = redis.call('HMGET', KEYS[1], ARGV[6], 'saga_id', 'saga_status')
if h[1] == '1' then
  return {'DONE', h[2] or ''}
end
if h[3] == 'running' or h[3] == 'compensating' then
  if mode == 'start' and ARGV[7] ~= '' then
    -- A failover may have erased the entry: put it back, keeping one that is there.
    if redis.call('ZADD', ARGV[7], 'NX', ARGV[8], ARGV[2]) == 1 then
      redis.call('HSET', KEYS[1], 'saga_indexed', ARGV[8])
    end
  end
  return {'JOINED', h[2]}
end
if mode == 'check' then
  return {'READY'}
end
if start_by ~= '' then
  local now = redis.call('TIME')
  if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) >= tonumber(start_by) then
    return {'LATE'}
  end
end
local snapshot = {}
for i = 11, #ARGV do
  snapshot[ARGV[i]] = redis.call('HGET', KEYS[1], ARGV[i]) or ''
end
local data = cjson.encode(snapshot)
if #data > tonumber(ARGV[9]) then
  return {'TOO_BIG', tostring(#data)}
end
local indexed = ''
if ARGV[7] ~= '' then  -- first: a shard on another master fails the call before any write
  redis.call('ZADD', ARGV[7], ARGV[8], ARGV[2])
  indexed = ARGV[8]
end
local attempt = redis.call('HINCRBY', KEYS[1], 'saga_attempt', 1)
local saga_id = ARGV[2] .. ':' .. attempt .. ':' .. ARGV[3]
redis.call('HSET', KEYS[1], 'saga_id', saga_id, 'saga_status', 'running', 'saga_step', '0',
  'saga_started', ARGV[4], 'saga_updated', ARGV[4], 'saga_deadline', ARGV[5],
  'saga_resends', '0', 'saga_reason', '', 'saga_data', data, 'saga_indexed', indexed,
  'saga_marks', '', 'saga_concurrent', ARGV[10])
return {'STARTED', saga_id, data}
