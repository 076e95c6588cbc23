-- surefoot: an operator deletes a record (_core.forget).
-- KEYS[1]: the record. ARGV: time ('' = the server clock). Reply: 1 if it was live.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = redis.call('HMGET', key, 's', 'l', 'e')
local state = classify(r[1], r[2], r[3], now)
redis.call('DEL', key)
if state == 'absent' then
  return 0
end
return 1
