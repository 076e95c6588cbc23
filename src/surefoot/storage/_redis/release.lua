-- surefoot: free the concurrency slots held under a token (Concurrency.release).
-- KEYS[1]: the limit's key. ARGV: time ('' = the server clock), token. Reply: nothing.
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local now = clock(ARGV[1])
local st = cmsgpack.unpack(raw)
local out, latest = {}, nil
for i = 1, #st, 3 do
  if st[i + 1] > now and st[i] ~= ARGV[2] then
    out[#out + 1] = st[i]
    out[#out + 1] = st[i + 1]
    out[#out + 1] = st[i + 2]
    if latest == nil or st[i + 1] > latest then
      latest = st[i + 1]
    end
  end
end
if latest == nil then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], cmsgpack.pack(out), 'PX', millis(latest - now))
end
return 0
