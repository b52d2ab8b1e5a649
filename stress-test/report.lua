-- Shared by first_checkout.lua and mixed_checkout.lua: counts replies per status and per
-- second in every wrk thread, and writes one report file when the run is done.
--
-- Settings come from the environment (wrk's setup() and done() run in the main Lua state,
-- which never sees the script's arguments):
--   BENCH_REPORT   file to write (default: wrk-report.txt)
--   BENCH_THREADS  the -t given to wrk, so that threads can share out order ids
--
-- Report lines (space separated; latencies in microseconds, from wrk's own histogram):
--   summary <duration_us> <requests> <bytes>
--   errors <connect> <read> <write> <status> <timeout>
--   latency <mean> <stdev> <max> <p50> <p90> <p95> <p99> <p99.9>
--   issued <thread> <requests handed out> <exhausted 0|1>
--   touched <order id>            once per distinct order id handed out (any thread)
--   status <code> <count>
--   second <unix time> <replies> <2xx> <4xx> <5xx>

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("tid", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state; these globals are its own).
statuses = {}     -- status code -> replies
per_second = {}   -- "<unix time>:<class>" -> replies, class in all, 2, 4, 5
issued = 0        -- requests handed out by request()
touched = {}      -- order id -> true, for every id handed out
exhausted = 0     -- 1 once a first-time run ran out of unpaid order ids

function nthreads()
   return tonumber(os.getenv("BENCH_THREADS") or "1")
end

local function bump(key)
   per_second[key] = (per_second[key] or 0) + 1
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   local now = os.time()
   bump(now .. ":all")
   bump(now .. ":" .. math.floor(status / 100))
end

function checkout(order_id)
   issued = issued + 1
   touched[order_id] = true
   -- An empty body, so that wrk sends "Content-Length: 0" as the course's clients do.
   return wrk.format("POST", "/orders/checkout/" .. order_id, nil, "")
end

function done(summary, latency, requests)
   local out = assert(io.open(os.getenv("BENCH_REPORT") or "wrk-report.txt", "w"))
   local e = summary.errors
   out:write(string.format("summary %d %d %d\n", summary.duration, summary.requests, summary.bytes))
   out:write(string.format("errors %d %d %d %d %d\n", e.connect, e.read, e.write, e.status, e.timeout))
   out:write(string.format("latency %d %d %d %d %d %d %d %d\n", latency.mean, latency.stdev,
      latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(95),
      latency:percentile(99), latency:percentile(99.9)))
   local codes, seconds, ids = {}, {}, {}
   for _, thread in ipairs(threads) do
      out:write(string.format("issued %d %d %d\n", thread:get("tid"), thread:get("issued"),
         thread:get("exhausted")))
      for id in pairs(thread:get("touched")) do
         ids[id] = true
      end
      for code, n in pairs(thread:get("statuses")) do
         codes[code] = (codes[code] or 0) + n
      end
      for key, n in pairs(thread:get("per_second")) do
         local sec, class = key:match("(%d+):(%w+)")
         seconds[sec] = seconds[sec] or {all = 0, ["2"] = 0, ["4"] = 0, ["5"] = 0}
         seconds[sec][class] = (seconds[sec][class] or 0) + n
      end
   end
   for code, n in pairs(codes) do
      out:write(string.format("status %d %d\n", code, n))
   end
   for sec, c in pairs(seconds) do
      out:write(string.format("second %s %d %d %d %d\n", sec, c.all, c["2"], c["4"], c["5"]))
   end
   for id in pairs(ids) do
      out:write(string.format("touched %d\n", id))
   end
   out:close()
end
