#!lua flags=allow-cross-slot-keys
-- Compare-and-set of a saga's position: moves only from the expected (saga, status, step).
-- KEYS[1] the entity hash
-- ARGV[1] saga id, ARGV[2] from status, ARGV[3] from step, ARGV[4] to status, ARGV[5] to step,
-- ARGV[6] now (ms), ARGV[7] reason ('' keeps the old one), ARGV[8] done field, ARGV[9] entity id,
-- ARGV[10] '' or the in-flight index shard its start registered it in (on this same master,
--          hence the flag above). A move to an end removes the entry if it is still the one the
--          start made (a re-registration or a reschedule since leaves it to the sweeper).
-- Returns {1, snapshot, reason} when moved, {0} when the saga was elsewhere (a stale or repeated reply).
local h = redis.call('HMGET', KEYS[1], 'saga_id', 'saga_status', 'saga_step', 'saga_data')
if h[1] ~= ARGV[1] or h[2] ~= ARGV[2] or h[3] ~= ARGV[3] then
  return {0}
end
local drop = false
if ARGV[10] ~= '' and (ARGV[4] == 'succeeded' or ARGV[4] == 'failed') then
  -- Read before any write: a shard on another master fails the call with nothing changed.
  local indexed = redis.call('HGET', KEYS[1], 'saga_indexed')
  local score = redis.call('ZSCORE', ARGV[10], ARGV[9])
  drop = indexed and indexed ~= '' and score and tonumber(score) == tonumber(indexed)
end
redis.call('HSET', KEYS[1], 'saga_status', ARGV[4], 'saga_step', ARGV[5],
  'saga_updated', ARGV[6], 'saga_resends', '0')
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'saga_reason', ARGV[7])
end
if ARGV[4] == 'succeeded' then  -- which saga paid stays known, across a later reset too
  redis.call('HSET', KEYS[1], ARGV[8], '1', 'saga_done_by', ARGV[1])
end
if drop then
  redis.call('ZREM', ARGV[10], ARGV[9])
end
return {1, h[4], redis.call('HGET', KEYS[1], 'saga_reason') or ''}
