-- surefoot: read an ordering record with the time it is read at.
-- KEYS[1]: the record. ARGV: time ('' = the server clock).
-- Reply: {time, n, k, v, u, e} (false for a missing field).
local r = order_read(KEYS[1])
return {fmt(clock(ARGV[1])), r[1], r[2], r[3], r[4], r[5]}
