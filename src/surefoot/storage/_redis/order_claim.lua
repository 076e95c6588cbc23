-- surefoot: claim an object for an event (_order.claim).
-- KEYS[1]: the record. ARGV: time ('' = the server clock), token, version, lease,
-- retention. Reply: {verdict (proceed, stale, busy), newest (false: none), until, time}.
local key = KEYS[1]
local now = clock(ARGV[1])
local token, version = ARGV[2], tonumber(ARGV[3])
local r = order_read(key)
local newest = nil
if order_live(r, now) then
  if r[1] then
    newest = tonumber(r[1])
  end
  -- Rule 2: stale first, whoever holds the record; Rule 3: busy while another's lease runs.
  if newest ~= nil and version < newest then
    return {'stale', r[1], r[4], fmt(now)}
  end
  if r[2] and now < tonumber(r[4]) and r[2] ~= token then
    return {'busy', r[1], r[4], fmt(now)}
  end
end
local until_ = now + tonumber(ARGV[4])
order_write(key, newest, token, version, until_, math.max(now + tonumber(ARGV[5]), until_), now)
if newest == nil then
  return {'proceed', false, fmt(until_), fmt(now)}
end
return {'proceed', fmt(newest), fmt(until_), fmt(now)}
