-- surefoot: the holder of a token is done with its event (_order.settle).
-- KEYS[1]: the record. ARGV: time ('' = the server clock), token, version, ok (1/0),
-- retention. Reply: 1 if the record changed, else 0.
local key = KEYS[1]
local now = clock(ARGV[1])
local token, version, ok = ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local retention = tonumber(ARGV[5])
local r = order_read(key)
if not order_live(r, now) then
  if not ok then
    return 0
  end
  -- Rule 5: the record expired while the event was processed; its work counts.
  order_write(key, version, nil, nil, now, now + retention, now)
  return 1
end
local old = nil
if r[1] then
  old = tonumber(r[1])
end
local newest = old
if ok and (newest == nil or version > newest) then
  newest = version
end
if r[2] == token then
  order_write(key, newest, nil, nil, now, now + retention, now)
  return 1
end
if newest == old then
  return 0  -- fenced out, nothing to add
end
local holding = nil
if r[3] then
  holding = tonumber(r[3])
end
local holder = r[2] or nil
local until_ = tonumber(r[4])
order_write(key, newest, holder, holding, until_, math.max(now + retention, until_), now)
return 1
