-- wrk script for streamgate's benchmark (bench/load.py runs it).
--
--   wrk -t1 -c8 -d5s -s reviews.lua https://127.0.0.1:PORT -- BODIES [RATE]
--
-- BODIES: a file with one request per line, "PATH<TAB>JSON BODY"; the connections take them
-- in turn. RATE (optional, requests/s for the whole run): each thread keeps a fixed schedule
-- (one slot every threads/RATE seconds) and a connection that finished its last request waits
-- for the next free slot, so the load is offered at RATE whatever the latency (as long as
-- enough connections are open). Without RATE every connection sends as fast as it can.
-- At the end one line "WRKJSON {...}" gives the counts and latency percentiles (µs).

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } sg_timespec;
  int clock_gettime(int clk, sg_timespec *tp);
]]
local ts = ffi.new("sg_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local requests = {}
local n = 0
local i = 0
local interval = 0 -- ms between this thread's slots; 0: no pacing
local next_slot = nil

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local f = assert(io.open(path, "r"))
  for line in f:lines() do
    local target, body = line:match("^([^\t]+)\t(.*)$")
    if target then
      n = n + 1
      requests[n] = wrk.format("POST", target, { ["Content-Type"] = "application/json" }, body)
    end
  end
  f:close()
  assert(n > 0, "no requests in " .. path)
  local rate = tonumber(args[2] or "0") or 0
  local nthreads = tonumber(args[3] or "1") or 1
  if rate > 0 then
    interval = 1000.0 * nthreads / rate
  end
  i = math.random(0, n - 1)
end

function request()
  i = i % n + 1
  return requests[i]
end

function delay()
  if interval == 0 then
    return 0
  end
  local t = now_ms()
  if next_slot == nil or next_slot < t - 50 then
    next_slot = t -- start, or more than 50 ms behind: do not send a burst to catch up
  end
  next_slot = next_slot + interval
  local d = next_slot - t
  if d <= 0 then
    return 0
  end
  return math.floor(d)
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({ 50, 75, 90, 99, 99.9 }) do
    p[#p + 1] = string.format('"%s": %d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, ' ..
    '"read": %d, "write": %d, "status": %d, "timeout": %d}, "latency_us": {%s, ' ..
    '"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, table.concat(p, ", "), latency.min, latency.max, latency.mean, latency.stdev))
end
