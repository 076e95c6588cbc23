-- surefoot: a request with this key arrives (_core.begin).
-- KEYS[1]: the record (KEYS[2], KEYS[3]: its owner's sets, see record.lua). ARGV: time
-- ('' = the server clock), fingerprint, token, lease, ttl, on_lease_expiry, max_records,
-- max_unknown (0: no quota). Reply: {1, generation, took_over, time} reserved;
-- {2, lease_expires_at, time} in progress; {3} mismatch;
-- {4, status, headers, body or nil} replay; {5, lease_expired_now} unknown;
-- {6, kind, limit, first expires_at, time} over the owner's quota (nothing written).
local key = KEYS[1]
local now = clock(ARGV[1])
local r = redis.call('HMGET', key, 's', 'f', 'g', 'l', 'e')
local state = classify(r[1], r[4], r[5], now)
if state ~= 'absent' and r[2] ~= ARGV[2] then
  return {3}
end
if state == 'absent' or (state == 'lease_expired' and ARGV[6] == 'reexecute') then
  local generation, took_over = 1, 0
  if state ~= 'absent' then
    generation, took_over = tonumber(r[3]) + 1, 1
  elseif #KEYS == 3 then
    -- A new record for its owner: unknown outcomes first, then all records (_over_quota).
    local refused = over(KEYS[3], tonumber(ARGV[8]), now)
    local kind = 'unknown'
    if refused == nil then
      refused, kind = over(KEYS[2], tonumber(ARGV[7]), now), 'records'
    end
    if refused ~= nil then
      return {6, kind, refused[1], refused[2], fmt(now)}
    end
  end
  local lease, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
  redis.call('DEL', key)
  redis.call('HSET', key, 's', 'in_flight', 'f', ARGV[2], 'k', ARGV[3],
    'g', string.format('%d', generation), 'l', fmt(now + lease), 'e', fmt(now + ttl),
    't', fmt(ttl))
  redis.call('PEXPIRE', key, millis(ttl))
  tally('in_flight', now + ttl, now)
  return {1, generation, took_over, fmt(now)}
end
if state == 'in_flight' then
  return {2, r[4], fmt(now)}
end
if state == 'completed' then
  local c = redis.call('HMGET', key, 'c', 'h', 'b')
  return {4, c[1], c[2], c[3]}
end
if state == 'lease_expired' then
  -- on_lease_expiry = "unknown": never execute again until resolved.
  redis.call('HSET', key, 's', 'unknown')
  tally('unknown', tonumber(r[5]), now)
  return {5, 1}
end
return {5, 0}
