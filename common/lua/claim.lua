-- A request that acts on many entities (batch_init) claims its request id first: the record keeps
-- what the request asked, so another request under the id is refused before anything changes.
-- The same request again (a retry, or a copy a frozen worker resumes with) goes on: each entity
-- then finds itself reset by it already (reset.lua, saga_reset.lua).
-- KEYS[1] the request's record; ARGV[1] what it asked, ARGV[2] how long the record lives (s)
-- Returns 1 when the request may go on, 0 when the id was used for another request.
local asked = redis.call('GET', KEYS[1])
if asked and asked ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
