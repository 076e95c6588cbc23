-- surefoot: a board's live slots, dropping the expired ones (board.lua).
-- KEYS[1]: the board. ARGV: time ('' = the server clock).
-- Reply: {slot, value, slot, value...} (slot names without their 's:').
local key = KEYS[1]
local now = clock(ARGV[1])
local all = redis.call('HGETALL', key)
local out, gone = {}, {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local bar = string.find(v, '|', 1, true)
  if tonumber(string.sub(v, 1, bar - 1)) > now then
    out[#out + 1] = string.sub(all[i], 3)
    out[#out + 1] = string.sub(v, bar + 1)
  else
    gone[#gone + 1] = all[i]
  end
end
board_forget(key, gone)
return out
