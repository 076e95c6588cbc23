-- surefoot: read a record with the time it is read at.
-- KEYS[1]: the record. ARGV: time ('' = the server clock).
-- Reply: {time, s, f, k, g, l, e, t, c, h, b} (nil for a missing field).
local r = redis.call('HMGET', KEYS[1], 's', 'f', 'k', 'g', 'l', 'e', 't', 'c', 'h', 'b')
local out = {fmt(clock(ARGV[1]))}
for i = 1, 10 do
  out[i + 1] = r[i]
end
return out
