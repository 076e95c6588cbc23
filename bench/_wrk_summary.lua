-- The summary every wrk script of bench/ ends with (bench/_harness.py's wrk() parses it):
-- done() prints one line, "SUREFOOT_BENCH {json}": requests, duration, errors by kind and
-- latency percentiles in microseconds.
-- A script of bench/ loads it from its own directory (the directory of the path wrk was
-- given, "./" if none), whatever the working directory:
--   dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_wrk_summary.lua")

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'SUREFOOT_BENCH {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,'
         .. '"write":%d,"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,"p50":%d,'
         .. '"p90":%d,"p99":%d,"max":%d}}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max
   ))
end
