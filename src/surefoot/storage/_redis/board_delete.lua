-- surefoot: delete a board's slot (board.lua).
-- KEYS[1]: the board. ARGV: time ('' = the server clock), slot. Reply: 1 if it was live.
local key, field = KEYS[1], 's:' .. ARGV[2]
local old = redis.call('HGET', key, field)
if not old then
  return 0
end
redis.call('HDEL', key, field)
if board_expiry(old) > clock(ARGV[1]) then
  return 1
end
return 0
