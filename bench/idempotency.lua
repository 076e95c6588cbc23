-- wrk script for every POST workload of bench/ (idempotency.py, gateway.py): POST a small
-- JSON body with an Idempotency-Key.
--
-- Usage: wrk ... -s bench/idempotency.lua URL -- MODE NONCE [KEY [BODY]]
--   MODE "unique": every request carries a new key, "<NONCE>-<thread id>-<counter>".
--   MODE "replay": every request carries KEY (primed by the caller, so each is a replay).
--   BODY: the JSON body (default: the one below).
-- done() (bench/_wrk_summary.lua) prints one line, "SUREFOOT_BENCH {json}".

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_wrk_summary.lua")

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
   body = args[4] or body
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
