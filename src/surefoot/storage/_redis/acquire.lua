-- surefoot: decide rate-limit requests, each all or nothing, in arrival order.
-- A port of surefoot.ratelimit._algorithms and _core.plan; each function below follows
-- its Python reference line by line (tests/storage/test_redis_differential.py proves it).
--
-- KEYS: the store key of every item of every request, in order.
-- ARGV[1]: the number of requests; then, per request: its time ('' = the server clock)
-- and its number of items; then, per item: algorithm, amount, window, capacity,
-- max_wait, lease, cost, enforce (1/0), token, and the number of candidate quota
-- periods followed by their (start, end) pairs.
-- Reply, per request: admitted (1/0), then per item: allowed (1/0), remaining,
-- reset_after, retry_after, delay, available_after (floats as strings).
--
-- States are MessagePack arrays (exact doubles), and sliding logs sorted sets, under keys
-- that expire when the state becomes equivalent to an absent one (Rule 3 of the
-- algorithms).

local function ulp(x)
  -- math.ulp of Python, for Lua 5.1 which has none.
  x = math.abs(x)
  if x == INF then
    return INF
  end
  if x == 0 then
    return math.ldexp(1, -1074)
  end
  local _, e = math.frexp(x)  -- x = m * 2^e with 0.5 <= m < 1
  local p = e - 53
  if p < -1074 then
    p = -1074
  end
  return math.ldexp(1, p)
end

local function slack(now, steps)
  return (steps + 2) * ulp(now) + EPS
end

local function pymod(a, b)
  -- Python's float %: C fmod, then the sign of the divisor.
  local m = math.fmod(a, b)
  if m ~= 0 and ((b < 0) ~= (m < 0)) then
    m = m + b
  end
  return m
end

-- Each DECIDE function returns: allowed, remaining, reset_after, retry_after, delay,
-- available_after, and the new state.

local function count_in(st, start, stop, now, cost, amount)
  local count = 0
  if st ~= nil and st[1] == start then
    count = st[2]
  end
  local reset = stop - now
  if count + cost <= amount then
    return true, amount - count - cost, reset, 0, 0, reset, count + cost
  end
  local retry = INF
  if cost <= amount then
    retry = reset
  end
  -- Nothing counted (only a cost above the amount was refused): nothing to come back.
  local available = 0
  if count ~= 0 then
    available = reset
  end
  return false, amount - count, reset, retry, 0, available, count
end

local DECIDE, EXPIRES = {}, {}

DECIDE.fixed_window = function(st, now, cost, lim)
  local start = now - pymod(now, lim.window)
  local ok, left, reset, retry, delay, available, count =
    count_in(st, start, start + lim.window, now, cost, lim.amount)
  return ok, left, reset, retry, delay, available, {start, count}
end
EXPIRES.fixed_window = function(st, lim)
  return st[1] + lim.window
end

DECIDE.quota = function(st, now, cost, lim)
  -- The caller sends the calendar period containing its time and its neighbours: take
  -- the one containing this step's time (the nearest, should the clocks disagree by more).
  local p = lim.periods
  local n = #p / 2
  local start, stop = p[1], p[2]
  if now >= p[2] then
    start, stop = p[2 * n - 1], p[2 * n]
    for i = 1, n do
      if p[2 * i - 1] <= now and now < p[2 * i] then
        start, stop = p[2 * i - 1], p[2 * i]
        break
      end
    end
  end
  local ok, left, reset, retry, delay, available, count =
    count_in(st, start, stop, now, cost, lim.amount)
  return ok, left, reset, retry, delay, available, {start, count, stop}
end
EXPIRES.quota = function(st, lim)
  return st[3]
end

-- A sliding log is a sorted set, read and written in place (not through `load`): one
-- member per admission, '<time>:<total>:<cost>' (each '%.17g', so it reads back
-- exactly), scored by its running total, which strictly increases. Times never
-- decrease, so the entries that left the window are the first members: a step pops
-- them (each entry once: amortised O(1)), and then reads the oldest and newest members
-- and, when refused, the entry `reaching` a total with one ZRANGE BYSCORE: O(log n) a
-- step, however long the log. After a step the log holds only live entries, at most
-- `amount` of them (a request that costs nothing leaves no entry).
local logs = {}  -- key -> {oldest = entry, newest = entry} read in this call (false: none)

local function entry(member)
  if member == nil then
    return false
  end
  local time, total, cost = string.match(member, '^([^:]*):([^:]*):(.*)$')
  return {tonumber(time), tonumber(total), tonumber(cost)}
end

local function time_of(member)
  return tonumber(string.match(member, '^[^:]*'))
end

local function add(key, entries)
  -- ZADD of `entries` ({time, total, cost} each), in chunks that Lua can unpack.
  local args = {}
  for i, e in ipairs(entries) do
    args[#args + 1] = fmt(e[2])
    args[#args + 1] = fmt(e[1]) .. ':' .. fmt(e[2]) .. ':' .. fmt(e[3])
    if #args == 1000 or i == #entries then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
end

local function convert(key, window, now)
  -- An older surefoot kept a log as a MessagePack list {t1, c1, t2, c2, ...} under a
  -- string key: rewrite it as a sorted set on first touch, its times made non-decreasing
  -- (a clock that stepped back) as the log keeps them now, entries of no cost left out.
  local old = cmsgpack.unpack(redis.call('GET', key))
  redis.call('DEL', key)
  local entries, time, total = {}, -INF, 0
  for i = 1, #old - 1, 2 do
    if old[i + 1] > 0 then
      time, total = math.max(time, old[i]), total + old[i + 1]
      entries[#entries + 1] = {time, total, old[i + 1]}
    end
  end
  if #entries > 0 then
    add(key, entries)
    redis.call('PEXPIRE', key, millis(time + window - now))
  end
end

local function live(key, horizon, window, now)
  -- The log's oldest entry later than `horizon` and its newest, once the entries at or
  -- before `horizon` are gone (false: none).
  local log = logs[key]
  if log == nil then
    local first = redis.pcall('ZRANGE', key, 0, 0)
    if first.err then  -- WRONGTYPE: a string, as an older surefoot kept the log
      convert(key, window, now)
      first = redis.call('ZRANGE', key, 0, 0)
    end
    log = {oldest = entry(first[1])}
    if not log.oldest then
      log.newest = false  -- empty
    end
    logs[key] = log
  end
  if log.oldest and log.oldest[1] <= horizon then
    if log.newest == nil then
      log.newest = entry(redis.call('ZRANGE', key, -1, -1)[1])
    end
    if log.newest[1] <= horizon then
      redis.call('DEL', key)  -- all of it
      log.oldest, log.newest = false, false
    else
      -- Some of it: count the members that left, 32 at a time, then pop them at once.
      local gone, oldest = 0, false
      repeat
        local chunk = redis.call('ZRANGE', key, gone, gone + 31)
        for _, member in ipairs(chunk) do
          if time_of(member) > horizon then
            oldest = entry(member)
            break
          end
          gone = gone + 1
        end
      until oldest
      redis.call('ZREMRANGEBYRANK', key, 0, gone - 1)
      log.oldest = oldest
    end
  end
  if log.newest == nil then
    log.newest = entry(redis.call('ZRANGE', key, -1, -1)[1])
  end
  return log.oldest, log.newest
end

local function append(key, e)
  add(key, {e})
  local log = logs[key]
  log.newest = e
  if not log.oldest then
    log.oldest = e
  end
end

DECIDE.sliding_log = function(key, now, cost, lim)
  local window, amount = lim.window, lim.amount
  local oldest, newest = live(key, now - window, window, now)
  local used = 0
  if oldest then
    used = newest[2] - oldest[2] + oldest[3]
  end
  if used + cost <= amount then
    -- Logged at now, or at the newest entry's time if that is later (a clock that
    -- stepped back), so that times never decrease.
    local at, total = now, cost
    if newest then
      if newest[1] >= now then
        at = newest[1]
      end
      total = newest[2] + cost
    end
    local new = {at, total, cost}
    local reset = window
    if at ~= now then
      reset = at + window - now
    end
    -- More is available when the oldest entry leaves the window.
    local first = oldest or new
    return true, amount - used - cost, reset, 0, 0, first[1] + window - now, new
  end
  if not oldest then  -- nothing live: the cost exceeds the amount
    return false, amount, 0, INF, 0, 0, nil
  end
  local reset = newest[1] + window - now
  local available = oldest[1] + window - now
  local retry = INF
  if cost <= amount then
    -- Wait until enough of the oldest entries leave the window: up to the first whose
    -- running total is `excess` past the total before the oldest.
    local excess = used + cost - amount
    local reaching = redis.call(
      'ZRANGE', key, fmt(oldest[2] - oldest[3] + excess), '+inf', 'BYSCORE', 'LIMIT', 0, 1)
    retry = entry(reaching[1])[1] + window - now
  end
  return false, amount - used, reset, retry, 0, available, nil
end

-- When a sliding window leaving `left` units has one more: its estimate has dropped to
-- amount - left - 1 (or nothing counts any more, at `quiet`).
local function sliding_available(prev, curr, left, start, quiet, now, lim)
  local window, amount = lim.window, lim.amount
  if left >= amount then
    return 0.0
  end
  local target = amount - left - 1
  local at
  if curr <= target then
    -- Within this window, once enough of the previous window has slid out.
    at = start + window * (1.0 - (target - curr) / prev)
  else
    -- Next window, as the current count (then the previous one) slides out.
    at = start + window + window * (1.0 - target / curr)
  end
  return math.max(math.min(at, quiet) - now, EPS)
end

DECIDE.sliding_window = function(st, now, cost, lim)
  local window, amount = lim.window, lim.amount
  local start = now - pymod(now, window)
  -- state: {window start, previous count, current count, last admission}; a state kept
  -- by an older surefoot has no last admission: its window's end bounds it.
  local prev, curr = 0, 0
  local last = -INF  -- the last admission that still counts
  if st ~= nil then
    local seen = st[4]
    if seen == nil then
      seen = st[1] + window
    end
    if seen + window > now then
      if st[1] == start then
        prev, curr, last = st[2], st[3], seen
      elseif st[1] == start - window then
        prev, last = st[3], seen
      end
    end
  end
  local weight = 1.0 - (now - start) / window
  local estimate = prev * weight + curr
  if estimate + cost <= amount + EPS then
    local left = math.max(0, math.floor(amount - estimate - cost + EPS))
    last = math.max(last, now)
    -- Nothing this request joins counts once a window has passed since the last
    -- admission: back to full then.
    local quiet = last + window
    local available = sliding_available(prev, curr + cost, left, start, quiet, now, lim)
    return true, left, quiet - now, 0, 0, available, {start, prev, curr + cost, last}
  end
  local left = math.max(0, math.floor(amount - estimate + EPS))
  if last == -INF then
    -- Nothing counts: only a cost above the amount is refused, for good.
    return false, left, 0.0, INF, 0, 0.0, nil
  end
  local quiet = last + window
  local retry = INF
  if cost <= amount then
    local at
    if curr + cost <= amount then
      -- Within this window, once enough of the previous window has slid out.
      at = start + window * (1.0 - (amount - curr - cost) / prev)
    else
      -- Next window: the current count becomes the weighted previous one.
      at = start + window + window * (1.0 - (amount - cost) / curr)
    end
    retry = math.max(math.min(at, quiet) - now, EPS)
  end
  local available = sliding_available(prev, curr, left, start, quiet, now, lim)
  return false, left, quiet - now, retry, 0, available, nil
end
EXPIRES.sliding_window = function(st, lim)
  return st[4] + lim.window
end

DECIDE.token_bucket = function(st, now, cost, lim)
  local capacity = lim.capacity
  local rate = lim.amount / lim.window
  local tokens
  if st == nil then
    tokens = capacity
  else
    tokens = st[1] + (now - st[2]) * rate
    if tokens >= capacity - rate * slack(now, 2) then
      tokens = capacity  -- full: exactly as a fresh key, whatever the rounding
    end
  end
  local allowed = tokens + EPS >= cost
  local retry = 0
  if allowed then
    tokens = math.max(0.0, tokens - cost)
  elseif cost <= capacity then
    retry = (cost - tokens) / rate
  else
    retry = INF
  end
  local left = math.floor(tokens + EPS)
  local reset = (capacity - tokens) / rate
  -- One whole token more: the next unit refilled.
  local available = 0.0
  if left < capacity then
    available = (left + 1 - tokens) / rate
  end
  return allowed, left, reset, retry, 0, available, {tokens, now}
end
EXPIRES.token_bucket = function(st, lim)
  local rate = lim.amount / lim.window
  return st[2] + (lim.capacity - st[1]) / rate
end

DECIDE.leaky_bucket = function(st, now, cost, lim)
  local capacity = lim.capacity
  local rate = lim.amount / lim.window
  local level = 0.0
  if st ~= nil then
    level = st[1] - (now - st[2]) * rate
  end
  if level <= rate * slack(now, 2) then
    level = 0.0  -- empty: exactly as a fresh key, whatever the rounding
  end
  local allowed = level + cost <= capacity + EPS
  local retry = 0
  if allowed then
    level = math.min(capacity, level + cost)
  elseif cost <= capacity then
    retry = (level + cost - capacity) / rate
  else
    retry = INF
  end
  local left = math.floor(capacity - level + EPS)
  -- Room for one more: the next unit leaked.
  local available = 0.0
  if left < capacity then
    available = (level - (capacity - left - 1)) / rate
  end
  return allowed, left, level / rate, retry, 0, available, {level, now}
end
EXPIRES.leaky_bucket = function(st, lim)
  return st[2] + st[1] / (lim.amount / lim.window)
end

DECIDE.leaky_queue = function(st, now, cost, lim)
  local interval = lim.window / lim.amount
  -- state: {the time the queue is free again}
  local start = now
  if st ~= nil then
    start = math.max(now, st[1])
  end
  local delay = start - now
  local sl = slack(now, math.ceil(lim.max_wait / interval) + cost)
  if delay <= lim.max_wait + sl then
    local free_at = start + cost * interval
    local left = math.max(0, math.floor((lim.max_wait - (free_at - now) + sl) / interval) + 1)
    -- One more fits once the queue has moved on by one interval past the last that fits.
    local available = free_at - now - lim.max_wait + left * interval
    return true, left, free_at - now, 0, delay, available, {free_at}
  end
  local retry = delay - lim.max_wait
  return false, 0, start - now, retry, 0, retry, nil
end
EXPIRES.leaky_queue = function(st, lim)
  return st[1]
end

DECIDE.gcra = function(st, now, cost, lim)
  local interval = lim.window / lim.amount
  local tolerance = interval * lim.capacity
  local tat = now
  if st ~= nil then
    tat = math.max(st[1], now)
  end
  local new_tat = tat + cost * interval
  local allow_at = new_tat - tolerance
  local sl = slack(now, lim.capacity + cost)
  local allowed = now + sl >= allow_at
  local retry = 0
  if allowed then
    tat = new_tat
  elseif cost <= lim.capacity then
    retry = allow_at - now
  else
    retry = INF
  end
  local left = math.max(0, math.floor((tolerance - (tat - now) + sl) / interval))
  -- One more unit once the theoretical arrival time is an interval closer.
  local available = 0.0
  if left < lim.capacity then
    available = tat - tolerance + (left + 1) * interval - now
  end
  return allowed, left, tat - now, retry, 0, available, {tat}
end
EXPIRES.gcra = function(st, lim)
  return st[1]
end

DECIDE.concurrency = function(st, now, cost, lim)
  -- state: {token1, expires1, cost1, token2, ...}; an expired slot is free again.
  local held, used = {}, 0
  if st ~= nil then
    for i = 1, #st, 3 do
      if st[i + 1] > now then
        held[#held + 1] = st[i]
        held[#held + 1] = st[i + 1]
        held[#held + 1] = st[i + 2]
        used = used + st[i + 2]
      end
    end
  end
  if used + cost <= lim.amount then
    held[#held + 1] = lim.token
    held[#held + 1] = now + lim.lease
    held[#held + 1] = cost
    return true, lim.amount - used - cost, 0, 0, 0, 0, held
  end
  local retry = INF
  if cost <= lim.amount then
    retry = 1.0  -- the time a slot frees is unknown
  end
  return false, lim.amount - used, 0, retry, 0, 0, nil
end
EXPIRES.concurrency = function(st, lim)
  local latest = 0
  for i = 2, #st, 3 do
    if i == 2 or st[i] > latest then
      latest = st[i]
    end
  end
  return latest
end

-- States read in this call (false: absent) and the keys to write back at the end; the
-- sliding logs written, each with its lifetime (their newest entry's time + window - now).
local cache, ttl, dirty = {}, {}, {}
local logs_written, expiry = {}, {}

local function load(key)
  local st = cache[key]
  if st == nil then
    local raw = redis.call('GET', key)
    if raw then
      st = cmsgpack.unpack(raw)
    else
      st = false
    end
    cache[key] = st
  end
  if st == false then
    return nil
  end
  return st
end

-- The requests of one call mostly repeat their limits' numbers: each string is parsed
-- once (strtod is a tenth of a batch's cost).
local numbers = {}
local function number(s)
  local x = numbers[s]
  if x == nil then
    x = tonumber(s)
    numbers[s] = x
  end
  return x
end

local out, size = {}, 0  -- size: the length of out, kept (Lua's # searches for it)
local arg, k = 2, 1
local allowed, remaining, reset, retry, delay, available, new = {}, {}, {}, {}, {}, {}, {}
local items = {}
for _ = 1, tonumber(ARGV[1]) do
  local now = clock(ARGV[arg])
  local n = tonumber(ARGV[arg + 1])
  arg = arg + 2
  local admitted = true
  for j = 1, n do
    local lim = {
      amount = number(ARGV[arg + 1]),
      window = number(ARGV[arg + 2]),
      capacity = number(ARGV[arg + 3]),
      max_wait = number(ARGV[arg + 4]),
      lease = number(ARGV[arg + 5]),
      token = ARGV[arg + 8],
    }
    local algorithm, cost = ARGV[arg], number(ARGV[arg + 6])
    local enforce = ARGV[arg + 7] == '1'
    local periods = tonumber(ARGV[arg + 9])
    if periods > 0 then
      lim.periods = {}
      for i = 1, 2 * periods do
        lim.periods[i] = tonumber(ARGV[arg + 9 + i])
      end
    end
    arg = arg + 10 + 2 * periods
    local decide = DECIDE[algorithm]
    if decide == nil then
      return redis.error_reply('surefoot: unknown algorithm ' .. algorithm)
    end
    -- Every item decides from the state before this request (plan reads them all first).
    local key = KEYS[k + j - 1]
    local state = key  -- a sliding log is read in place
    if algorithm ~= 'sliding_log' then
      state = load(key)
    end
    allowed[j], remaining[j], reset[j], retry[j], delay[j], available[j], new[j] =
      decide(state, now, cost, lim)
    items[j] = {algorithm, lim}
    if enforce and not allowed[j] then
      admitted = false
    end
  end
  size = size + 1
  if admitted then
    out[size] = 1
  else
    out[size] = 0
  end
  local logged = {}  -- sliding log key -> the item whose admission it logs
  for j = 1, n do
    local key = KEYS[k + j - 1]
    if admitted and allowed[j] then
      if items[j][1] == 'sliding_log' then
        -- A request that costs nothing (a read of the limit) leaves no entry.
        if new[j][3] > 0 then
          logged[key] = j
        else
          logged[key] = nil
        end
      else
        cache[key] = new[j]
        if ttl[key] == nil then
          dirty[#dirty + 1] = key
        end
        ttl[key] = EXPIRES[items[j][1]](new[j], items[j][2]) - now
      end
    end
    if allowed[j] then
      out[size + 1] = 1
    else
      out[size + 1] = 0
    end
    out[size + 2] = remaining[j]
    out[size + 3] = fmt(reset[j])
    out[size + 4] = fmt(retry[j])
    out[size + 5] = fmt(delay[j])
    out[size + 6] = fmt(available[j])
    size = size + 6
  end
  -- Logged once every item has read its log; a key named twice keeps what the last item
  -- left (its entry, or none), as plan's last write wins.
  for j = 1, n do
    local key = KEYS[k + j - 1]
    if logged[key] == j then
      append(key, new[j])
      if expiry[key] == nil then
        logs_written[#logs_written + 1] = key
      end
      expiry[key] = new[j][1] + items[j][2].window - now
    end
  end
  k = k + n
end

for _, key in ipairs(logs_written) do
  redis.call('PEXPIRE', key, millis(expiry[key]))
end
for _, key in ipairs(dirty) do
  if ttl[key] > 0 then
    redis.call('SET', key, cmsgpack.pack(cache[key]), 'PX', millis(ttl[key]))
  else
    redis.call('DEL', key)  -- already equivalent to an absent state
  end
end
return out
