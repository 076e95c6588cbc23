-- surefoot: helpers every script starts with (prepended when the script is loaded).
-- Numbers are Lua 5.1 doubles, the same IEEE doubles as Python's floats: each formula
-- below is written in the same order of operations as its Python reference, so both
-- round alike. Floats travel as '%.17g' strings both ways (Redis would truncate a Lua
-- number in a reply to an integer, and tostring() keeps only 14 digits).

local EPS = 1e-9
local INF = math.huge

local function fmt(x)
  if x == 0 and 1 / x > 0 then
    return '0'  -- what the format gives +0 (not -0), without its cost: half the fields
  end
  return string.format('%.17g', x)
end

-- The time of this step: the server's clock when the caller sent '', else the caller's.
local server_now = nil
local function clock(arg)
  if arg == '' then
    if server_now == nil then
      local t = redis.call('TIME')
      server_now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    end
    return server_now
  end
  return tonumber(arg)
end

-- Milliseconds for PEXPIRE/PX: rounded up, plus one, so that Redis never drops a key
-- before the instant its state becomes equivalent to an absent one; and at least a
-- second, so that a state written a moment before its end is still there when read on a
-- caller's clock a little behind Redis's (keeping it longer changes no decision).
local function millis(seconds)
  if seconds > 1e12 then
    seconds = 1e12  -- a finite bound for PX; no state lives 30,000 years
  end
  return string.format('%d', math.max(math.ceil(seconds * 1000) + 1, 1000))
end
