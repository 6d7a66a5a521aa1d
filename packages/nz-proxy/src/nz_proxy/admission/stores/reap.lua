-- Hand out one API key's journal entries whose owner seems gone:
--   a reservation whose lease ran out unsettled becomes 'A|' (abandoned: it stays
--   counted as reserved, and a late settlement can no longer change it) - the lease
--   is the crash detector, so no further grace applies;
--   a settled row that nobody released within the grace period.
-- KEYS: 1 leases, 2 journal   ARGV: 1 now ms ('' = Redis TIME), 2 grace ms
-- Returns {rid, entry, rid, entry, ...}
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[1])
end
local grace = tonumber(ARGV[2])
local entries = redis.call('HGETALL', KEYS[2])
local out = {}
for i = 1, #entries, 2 do
  local rid, entry = entries[i], entries[i + 1]
  local kind = string.sub(entry, 1, 2)
  if kind == 'R|' then
    local expiry = redis.call('ZSCORE', KEYS[1], rid)
    if (not expiry) or tonumber(expiry) <= now then
      entry = 'A|' .. string.sub(entry, 3)
      redis.call('HSET', KEYS[2], rid, entry)
      out[#out + 1] = rid
      out[#out + 1] = entry
    end
  elseif kind == 'A|' then
    out[#out + 1] = rid
    out[#out + 1] = entry
  elseif kind == 'S|' then
    local stamp = tonumber(string.sub(entry, 3, string.find(entry, '|', 3, true) - 1))
    if stamp <= now - grace then
      out[#out + 1] = rid
      out[#out + 1] = entry
    end
  end
end
return out
