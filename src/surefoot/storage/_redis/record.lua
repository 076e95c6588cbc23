-- surefoot: idempotency records (a port of surefoot.idempotency._core).
-- A record is a hash: s state (in_flight, completed, unknown), f fingerprint, k token,
-- g generation, l lease_expires_at, e expires_at, t ttl, c status, h headers, b body
-- (no b: the body was too large to keep). Times are this store's clock ('%.17g').
-- An owned record (_core Rule 7) comes with KEYS[2] and KEYS[3], its owner's sorted sets
-- of live records and of unknown ones (the same hash tag: one slot), where it is a
-- member (the last 40 characters of its key) scored by its expires_at. A member whose
-- score has passed has expired; it is dropped before the owner's records are counted.

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
  -- Returns the new expires_at.
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
  return now + ttl
end

-- Keep the owner's sets in step with the record: state nil when it is deleted.
local function tally(state, expires_at, now)
  if #KEYS < 3 then
    return
  end
  local member = string.sub(KEYS[1], -40)
  if state == nil then
    redis.call('ZREM', KEYS[2], member)
    redis.call('ZREM', KEYS[3], member)
    return
  end
  local sets = {KEYS[2]}
  if state == 'unknown' then
    sets[2] = KEYS[3]
  else
    redis.call('ZREM', KEYS[3], member)
  end
  local ms = tonumber(millis(expires_at - now))
  for _, set in ipairs(sets) do
    redis.call('ZADD', set, fmt(expires_at), member)
    if redis.call('PTTL', set) < ms then
      redis.call('PEXPIRE', set, ms)  -- a set outlives its last member
    end
  end
end

-- What the owner holds at `now` (_core.Usage), for the quota `limit` of the set `set`:
-- nil when under it, else {limit, the first expires_at}.
local function over(set, limit, now)
  if limit <= 0 then
    return nil
  end
  redis.call('ZREMRANGEBYSCORE', set, '-inf', fmt(now))
  if redis.call('ZCARD', set) < limit then
    return nil
  end
  local first = redis.call('ZRANGE', set, 0, 0, 'WITHSCORES')
  return {limit, first[2]}
end
