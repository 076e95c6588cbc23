-- wrk script for bench/ratelimit_http.py: wrk's own GET request, and a parsable summary.
--
-- Usage: wrk ... -s bench/ratelimit.lua URL
-- No request() function: every configuration gets the same pre-built GET.
-- done() prints one line, "SUREFOOT_BENCH {json}", that the Python driver parses.

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
