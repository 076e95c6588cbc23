-- surefoot: idempotency records (a port of surefoot.idempotency._core).
-- A record is a hash: s state (in_flight, completed, unknown), f fingerprint, k token,
-- g generation, l lease_expires_at, e expires_at, t ttl, c status, h headers, b body
-- (no b: the body was too large to keep). Times are this store's clock ('%.17g').

local function classify(s, l, e, now)
  if not s or now >= tonumber(e) then
    return 'absent'
  end
  if s == 'in_flight' and now >= tonumber(l) then
    return 'lease_expired'
  end
  return s
end

-- _core._settled: the same record in state `target`, its TTL restarting at `now`.
-- ARGV[first..first+3]: has a response (1/0), status, headers, has a body (1/0);
-- ARGV[first+4]: the body.
-- Deletions first and then ONE HSET: a write refused half-way (out of memory) must never
-- leave a completed state without its response.
local function settle(key, target, now, first)
  local ttl = tonumber(redis.call('HGET', key, 't'))
  if ARGV[first] ~= '1' then
    redis.call('HDEL', key, 'c', 'h', 'b')
    redis.call('HSET', key, 's', target, 'e', fmt(now + ttl))
  elseif ARGV[first + 3] == '1' then
    redis.call('HSET', key, 's', target, 'e', fmt(now + ttl), 'c', ARGV[first + 1],
      'h', ARGV[first + 2], 'b', ARGV[first + 4])
  else
    redis.call('HDEL', key, 'b')
    redis.call('HSET', key, 's', target, 'e', fmt(now + ttl), 'c', ARGV[first + 1],
      'h', ARGV[first + 2])
  end
  redis.call('PEXPIRE', key, millis(ttl))
end
