-- surefoot: boards (surefoot.metrics' BoardStore). A board is one hash (one key: any
-- cluster serves it); slot <name> is the field 's:<name>' (never one of the one-letter
-- fields of records and ordering records, which purge.lua and get.lua read), its value
-- '<expires_at %.17g>|<bytes>'. The key expires with the board's latest slot; expired
-- slots are dropped by the reads, and by a new slot's write on a full board.

-- The time of this step and the slot's expiry on this store's clock: on the server's,
-- the caller's expires_at moved by the server's now minus the caller's.
-- ARGV[1]: time ('' = the server clock), ARGV[2]: the caller's now, ARGV[3]: expires_at.
local function board_times()
  local now = clock(ARGV[1])
  local e = tonumber(ARGV[3])
  if ARGV[1] == '' then
    e = now + (e - tonumber(ARGV[2]))
  end
  return now, e
end

local function board_expiry(v)
  return tonumber(string.sub(v, 1, string.find(v, '|', 1, true) - 1))
end

-- HDEL of many fields, a thousand at a time (unpack has a bound).
local function board_forget(key, fields)
  for i = 1, #fields, 1000 do
    redis.call('HDEL', key, unpack(fields, i, math.min(i + 999, #fields)))
  end
end

-- Drop the board's expired slots; how many live ones are left.
local function board_sweep(key, now)
  local all = redis.call('HGETALL', key)
  local gone, live = {}, 0
  for i = 1, #all, 2 do
    if board_expiry(all[i + 1]) > now then
      live = live + 1
    else
      gone[#gone + 1] = all[i]
    end
  end
  board_forget(key, gone)
  return live
end

-- Set the slot (claim: only if it is not live). Reply: 1 set, 0 live (a claim), -1 full.
-- ARGV[4]: the slot, ARGV[5]: the value, ARGV[6]: the most live slots of a board.
local function board_write(claim)
  local key, field = KEYS[1], 's:' .. ARGV[4]
  local now, e = board_times()
  local old = redis.call('HGET', key, field)
  if old and board_expiry(old) > now then
    if claim then
      return 0
    end
  elseif redis.call('HLEN', key) >= tonumber(ARGV[6]) and board_sweep(key, now) >= tonumber(ARGV[6]) then
    return -1
  end
  redis.call('HSET', key, field, fmt(e) .. '|' .. ARGV[5])
  local ttl = millis(e - now)
  if redis.call('PTTL', key) < tonumber(ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
  return 1
end
