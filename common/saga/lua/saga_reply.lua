#!lua flags=allow-cross-slot-keys
-- A participant's reply moves its saga: a compare-and-set of the saga's position, like
-- saga_move, that also keeps the replies which come before their turn. A saga whose commands
-- all went out at its start (saga_concurrent, set by saga_begin) hears from its steps in any
-- order: a step that answers while an earlier one is still out is marked, and the position
-- moves past it once the earlier one answers. saga_marks holds one character per step: 's' its
-- command took effect, 'c' it holds nothing (compensated, or its command failed), '-' not heard
-- from.
-- Running, the position is the first step not known to have succeeded; turning back, the
-- highest step not known to hold nothing. A failure turns the saga back from the highest step
-- whose command went out (the last one for a concurrent saga, the failed one otherwise).
-- KEYS[1] the entity hash
-- ARGV[1] saga id, ARGV[2] 'succeeded' | 'failed' | 'compensated', ARGV[3] the step answering,
-- ARGV[4] how many steps, ARGV[5] now (ms), ARGV[6] reason ('' keeps the old one),
-- ARGV[7] done field, ARGV[8] entity id,
-- ARGV[9] '' or the in-flight index shard its start registered it in (as in saga_move).
-- Returns {0} for a stale or repeated reply, else
-- {1, status, step, marks, snapshot, reason, concurrent ('1' or '0')}.
local h = redis.call('HMGET', KEYS[1], 'saga_id', 'saga_status', 'saga_step', 'saga_data',
  'saga_marks', 'saga_concurrent')
if h[1] ~= ARGV[1] then
  return {0}
end
local kind, j, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local status, step = h[2], tonumber(h[3])
local marks = h[5]
if not marks or #marks ~= n then
  marks = string.rep('-', n)
end
local function at(k)
  return string.sub(marks, k + 1, k + 1)
end
local function mark(k, c)
  marks = string.sub(marks, 1, k) .. c .. string.sub(marks, k + 2)
end
local function back(from)  -- turning back: past every step that holds nothing
  while from >= 0 and at(from) == 'c' do
    from = from - 1
  end
  if from < 0 then
    return 'failed', -1
  end
  return 'compensating', from
end
local to_status, to_step
if kind == 'succeeded' then
  if status ~= 'running' or j < step or at(j) == 's' then
    return {0}
  end
  mark(j, 's')
  to_status, to_step = 'running', step
  while to_step < n and at(to_step) == 's' do
    to_step = to_step + 1
  end
  if to_step == n then
    to_status, to_step = 'succeeded', n - 1
  end
elseif kind == 'failed' then
  if status ~= 'running' or j < step then
    return {0}
  end
  mark(j, 'c')
  local top = j
  if h[6] == '1' then
    top = n - 1
  end
  to_status, to_step = back(top)
else
  if status ~= 'compensating' or j > step or at(j) == 'c' then
    return {0}
  end
  mark(j, 'c')
  to_status, to_step = back(step)
end
local drop = false
if ARGV[9] ~= '' and (to_status == 'succeeded' or to_status == 'failed') then
  -- Read before any write: a shard on another master fails the call with nothing changed.
  local indexed = redis.call('HGET', KEYS[1], 'saga_indexed')
  local score = redis.call('ZSCORE', ARGV[9], ARGV[8])
  drop = indexed and indexed ~= '' and score and tonumber(score) == tonumber(indexed)
end
redis.call('HSET', KEYS[1], 'saga_marks', marks)
if to_status ~= status or to_step ~= step then
  redis.call('HSET', KEYS[1], 'saga_status', to_status, 'saga_step', tostring(to_step),
    'saga_updated', ARGV[5], 'saga_resends', '0')
end
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[1], 'saga_reason', ARGV[6])
end
if to_status == 'succeeded' then  -- which saga paid stays known, across a later reset too
  redis.call('HSET', KEYS[1], ARGV[7], '1', 'saga_done_by', ARGV[1])
end
if drop then
  redis.call('ZREM', ARGV[9], ARGV[8])
end
local reason = redis.call('HGET', KEYS[1], 'saga_reason') or ''
return {1, to_status, tostring(to_step), marks, h[4], reason, h[6] or '0'}
