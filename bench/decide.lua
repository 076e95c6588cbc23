-- wrk script of bench/edge.py: a request to `surefoot decide`'s /decide as an edge sends it,
-- describing the original request (GET /items) by X-Original-Method and X-Original-URI.
--
-- Usage: wrk ... -s bench/decide.lua http://127.0.0.1:PORT/decide
-- No request() function: wrk's pre-built GET, with these two fields, every time.
-- done() (bench/_wrk_summary.lua) prints one line, "SUREFOOT_BENCH {json}".

wrk.headers["X-Original-Method"] = "GET"
wrk.headers["X-Original-URI"] = "/items"

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "_wrk_summary.lua")
