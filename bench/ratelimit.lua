-- wrk script for every GET workload of bench/ (ratelimit_http.py, gateway.py): wrk's own
-- pre-built request, and a parsable summary.
--
-- Usage: wrk ... -s bench/ratelimit.lua URL
-- No request() function: every configuration gets the same pre-built GET.
-- done() (bench/_wrk_summary.lua) prints one line, "SUREFOOT_BENCH {json}".

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_wrk_summary.lua")
