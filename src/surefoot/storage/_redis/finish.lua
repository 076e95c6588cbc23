-- surefoot: the holder of a token settles its reservation (_core.finish).
-- KEYS[1]: the record (KEYS[2], KEYS[3]: its owner's sets, see record.lua). ARGV: time
-- ('' = the server clock), token, step (complete, release, mark_unknown), then the
-- response as in settle(). Reply: 1 accepted, 0 refused (fenced out, absent or already
-- completed), -1 completing without a response.
local key = KEYS[1]
local now = clock(ARGV[1])
local r = redis.call('HMGET', key, 's', 'k', 'l', 'e')
local state = classify(r[1], r[3], r[4], now)
if state == 'absent' then
  if r[1] then
    redis.call('DEL', key)  -- expired, as the reference drops it (on the server clock, Redis has)
    tally(nil)
  end
  return 0
end
if r[2] ~= ARGV[2] or state == 'completed' then
  return 0
end
if ARGV[3] == 'release' then
  redis.call('DEL', key)
  tally(nil)
  return 1
end
if ARGV[3] == 'complete' and ARGV[4] ~= '1' then
  return -1
end
local target = 'unknown'
if ARGV[3] == 'complete' then
  target = 'completed'
end
tally(target, settle(key, target, now, 4), now)
return 1
