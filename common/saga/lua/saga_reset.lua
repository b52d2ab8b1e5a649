-- batch_init of an entity a saga may be running on: replace the entity's own fields and, in the
-- same step, turn back a saga of it that is still running (as Orchestrator.abort does: its
-- current step and every one before are compensated, a concurrent saga's every step), so that
-- no saga begun before the reset can finish on the new entity. The saga's fields stay: its compensations' replies end it, the
-- sweeper follows it, and a checkout waiting on it gets its verdict.
-- KEYS[1] the entity hash
-- ARGV[1] now (ms), ARGV[2] reason, ARGV[3] done field, ARGV[4] the last step (a concurrent
-- saga turns back from it: every command of it went out at its start), ARGV[5] the batch_init's
-- request: its rank (claim.lua), '#', its id; ARGV[6..] field, value pairs
-- Once per batch_init request (as reset.lua): a copy of the request that comes again finds the
-- entity reset by it and changes nothing: a saga begun since is left alone, and one that reset
-- turned back is only returned again (its compensation is sent again, which changes nothing).
-- An entity reset by a batch_init of a higher rank, which came after this one, is left alone (a
-- reset called in-process without a request id has no rank, and resets).
-- Returns {} or, for a live saga (turned back now or already turning back),
-- {saga_id, step, snapshot, started, concurrent ('1' or '0')}
local h = redis.call('HMGET', KEYS[1], 'saga_id', 'saga_status', 'saga_step', 'saga_data',
  'saga_started', 'saga_concurrent', 'reset_by', 'saga_reason')
local function rank(by)
  return tonumber(string.match(by or '', '^(%d+)#')) or 0
end
local mine = rank(ARGV[5])
local live
if h[7] == ARGV[5] then
  -- a copy: only the saga this reset turned back is still its business
  live = h[2] == 'compensating' and h[8] == ARGV[2]
elseif mine > 0 and rank(h[7]) > mine then
  -- a later batch_init reset it: what runs on it now began after that one
  live = false
else
  if h[2] == 'running' then
    if h[6] == '1' then
      h[3] = ARGV[4]
    end
    redis.call('HSET', KEYS[1], 'saga_status', 'compensating', 'saga_step', h[3] or '0',
      'saga_updated', ARGV[1], 'saga_resends', '0', 'saga_reason', ARGV[2])
  end
  redis.call('HSET', KEYS[1], ARGV[3], '0', 'reset_at', ARGV[1], 'reset_by', ARGV[5],
    unpack(ARGV, 6))
  live = h[2] == 'running' or h[2] == 'compensating'
end
if not live then
  return {}
end
-- (a nil would cut the table short)
return {h[1], h[3] or '0', h[4] or '{}', h[5] or '0', h[6] or '0'}
