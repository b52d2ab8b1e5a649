-- A request that acts on many entities (batch_init) claims its request id first: the record keeps
-- what the request asked, so another request under the id is refused before anything changes.
-- The same request again (a retry, or a copy a frozen worker resumes with) goes on while the
-- first has not written every reset (each entity then finds itself reset by it already:
-- reset.lua, saga_reset.lua); once it has (ARGV[3] '1' marks it so), a copy changes nothing,
-- however many other requests reset the entities since.
-- KEYS[1] the request's record; ARGV[1] what it asked, ARGV[2] how long the record lives (s),
-- ARGV[3] '1' to mark the request done, else '0'
-- Returns 1 when the request may go on, 0 when the id was used for another request, 2 when the
-- request is done already (or has just been marked done).
local record = redis.call('GET', KEYS[1])
local asked, done = record, false
if record and string.sub(record, -5) == '|done' then
  asked, done = string.sub(record, 1, -6), true
end
if asked and asked ~= ARGV[1] then
  return 0
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1] .. '|done', 'EX', ARGV[2])
  return 2
end
if done then
  return 2
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
