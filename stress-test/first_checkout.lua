-- wrk script: first-time checkouts only. Every request checks out a distinct, so far unpaid
-- order: thread k of T hands out the ids FIRST+k, FIRST+k+T, FIRST+k+2T, ... below LAST, so no
-- two requests (on any thread or connection) share an id and ids are consumed in order.
-- Environment: BENCH_FIRST_ID [0], BENCH_LAST_ID [100000] (exclusive), plus report.lua's.
-- A thread that runs out of ids stops and marks itself exhausted in the report.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local next_id, last_id, stride

function init(args)
   stride = nthreads()
   next_id = tonumber(os.getenv("BENCH_FIRST_ID") or "0") + tid
   last_id = tonumber(os.getenv("BENCH_LAST_ID") or "100000")
end

function request()
   if next_id >= last_id then
      exhausted = 1
      wrk.thread:stop()
      -- wrk still needs a request; a harmless read of an order (not counted as issued).
      return wrk.format("GET", "/orders/find/0")
   end
   local id = next_id
   next_id = next_id + stride
   return checkout(id)
end
