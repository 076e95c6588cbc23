-- wrk script for bench/idempotency.py: POST a small JSON body with an Idempotency-Key.
--
-- Usage: wrk ... -s bench/idempotency.lua URL -- MODE NONCE [KEY]
--   MODE "unique": every request carries a new key, "<NONCE>-<thread id>-<counter>".
--   MODE "replay": every request carries KEY (primed by the caller, so each is a replay).
-- done() prints one line, "SUREFOOT_BENCH {json}", that the Python driver parses.

local body = '{"amount":1000,"currency":"eur","customer":"cus_4QFJOjw2pOmAGJ","description":"bench"}'
local headers = { ["Content-Type"] = "application/json" }
local mode, nonce
local counter = 0
local fixed -- the one pre-built request of the replay mode

local threads = {}

function setup(thread)
   table.insert(threads, thread)
   thread:set("id", #threads)
end

function init(args)
   mode = args[1] or "unique"
   nonce = args[2] or "0"
   if mode == "replay" then
      headers["Idempotency-Key"] = args[3] or "bench-replay"
      fixed = wrk.format("POST", nil, headers, body)
   elseif mode ~= "unique" then
      error("mode: expected unique or replay, got " .. mode)
   end
end

-- Both modes go through request() so that wrk's own cost per request is alike.
function request()
   if fixed then
      return fixed
   end
   counter = counter + 1
   headers["Idempotency-Key"] = string.format("%s-%d-%d", nonce, id, counter)
   return wrk.format("POST", nil, headers, body)
end

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
