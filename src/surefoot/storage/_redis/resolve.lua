-- surefoot: an operator supplies the outcome of an unknown or abandoned execution
-- (_core.resolve). KEYS[1]: the record (KEYS[2], KEYS[3]: its owner's sets). ARGV: time
-- ('' = the server clock), then the response as in settle(). Reply: 1 accepted, 0 refused.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = redis.call('HMGET', key, 's', 'l', 'e')
local state = classify(r[1], r[2], r[3], now)
if state ~= 'lease_expired' and state ~= 'unknown' then
  return 0
end
tally('completed', settle(key, 'completed', now, 2), now)
return 1
