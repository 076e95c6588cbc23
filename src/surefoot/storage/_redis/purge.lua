-- surefoot: delete a record if it has expired at the caller's time (clock="caller" only:
-- on the server clock Redis expires records itself).
-- KEYS[1]: the record. ARGV: time. Reply: 1 if deleted.
local e = redis.call('HGET', KEYS[1], 'e')
if e and tonumber(e) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
