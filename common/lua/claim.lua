-- A request that acts on many entities (batch_init) claims its request id first: the record keeps
-- what the request asked, so another request under the id is refused before anything changes,
-- and the request's rank: its place among the service's batch_inits, in the order they claimed.
-- An entity reset by a request of a higher rank is left alone by one of a lower rank (reset.lua,
-- saga_reset.lua): a copy of a request that a frozen worker resumes with, mid-way through its
-- writes, after the gateway's retry did it and the client's next batch_init ran, resets nothing
-- that next one reset.
-- The same request again (a retry, or such a copy) goes on with the rank it claimed while the
-- first has not written every reset (each entity then finds itself reset by it already); once
-- it has (ARGV[3] holds the rank to mark it done with), a copy changes nothing.
-- KEYS[1] the request's record, KEYS[2] the service's count of claims (the same slot)
-- ARGV[1] what it asked, ARGV[2] how long the record lives (s), ARGV[3] the request's rank to
-- mark it done, else ''
-- Returns {1, rank} when the request may go on, {0, 0} when the id was used for another request,
-- {2, rank} when the request is done already (or has just been marked done).
local record = redis.call('GET', KEYS[1])
local rank, done = nil, false
if record then
  if string.sub(record, -5) == '|done' then
    record, done = string.sub(record, 1, -6), true
  end
  local asked
  rank, asked = string.match(record, '^(%d+)#(.*)$')
  if not rank then
    asked = record -- kept before requests had ranks: it goes on with a new one
  end
  if asked ~= ARGV[1] then
    return {0, 0}
  end
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[1], ARGV[3] .. '#' .. ARGV[1] .. '|done', 'EX', ARGV[2])
  return {2, tonumber(ARGV[3])}
end
if done then
  return {2, tonumber(rank) or 0}
end
if not rank then
  rank = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], rank .. '#' .. ARGV[1], 'EX', ARGV[2])
end
return {1, tonumber(rank)}
