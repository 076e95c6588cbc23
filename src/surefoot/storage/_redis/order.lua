-- surefoot: the webhook ordering guard's records (a port of surefoot.webhooks._order).
-- A record is a hash under one key (one slot: any cluster), n newest (missing: none yet),
-- k holder and v holding (missing: nobody), u until, e expires; times are this store's
-- clock, numbers '%.17g'. The field e is also what purge.lua reads. Each script below
-- re-states the rules of _order: the differential tests hold it to the Python reference.

local function order_read(key)
  -- The live record's fields {n, k, v, u, e} (false when missing), or nil when there is
  -- no record or it has expired at `now` (ABSENT).
  return redis.call('HMGET', key, 'n', 'k', 'v', 'u', 'e')
end

local function order_live(r, now)
  return r[5] and now < tonumber(r[5])
end

-- Write a whole record (the fields of a missing value deleted) and its time to live.
local function order_write(key, newest, holder, holding, until_, expires, now)
  local gone = {}
  local set = {'u', fmt(until_), 'e', fmt(expires)}
  if newest == nil then
    gone[#gone + 1] = 'n'
  else
    set[#set + 1] = 'n'
    set[#set + 1] = fmt(newest)
  end
  if holder == nil then
    gone[#gone + 1] = 'k'
    gone[#gone + 1] = 'v'
  else
    set[#set + 1] = 'k'
    set[#set + 1] = holder
    set[#set + 1] = 'v'
    set[#set + 1] = fmt(holding)
  end
  if #gone > 0 then
    redis.call('HDEL', key, unpack(gone))
  end
  redis.call('HSET', key, unpack(set))
  redis.call('PEXPIRE', key, millis(expires - now))
end
