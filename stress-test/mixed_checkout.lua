-- wrk script: the locust test's mix without the think time. Every request checks out a random
-- order of FIRST..LAST-1, repeats included, so paid orders are checked out again and again.
-- Environment: BENCH_FIRST_ID [0], BENCH_LAST_ID [100000] (exclusive), plus report.lua's.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local first_id, last_id

function init(args)
   first_id = tonumber(os.getenv("BENCH_FIRST_ID") or "0")
   last_id = tonumber(os.getenv("BENCH_LAST_ID") or "100000")
   math.randomseed(os.time() * 1000 + tid)
end

function request()
   return checkout(math.random(first_id, last_id - 1))
end
