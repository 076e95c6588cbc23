-- surefoot: an operator deletes a record (_core.forget).
-- KEYS[1]: the record (KEYS[2], KEYS[3]: its owner's sets). ARGV: time ('' = the server
-- clock). Reply: 1 if it was live.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = redis.call('HMGET', key, 's', 'l', 'e')
local state = classify(r[1], r[2], r[3], now)
redis.call('DEL', key)
tally(nil)
if state == 'absent' then
  return 0
end
return 1
