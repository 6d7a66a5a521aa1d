-- Admit one request for one API key, atomically (SPEC §4.4). Mirrors
-- nz_core.limiter.KeyState.admit; every key shares the API key's hash tag.
--
-- KEYS: 1 request window (zset rid -> ms), 2 token window (hash bucket -> tokens),
--       3 leases (zset rid -> expiry ms), 4 journal (hash rid -> reservation),
--       5.. one budget counter per configured period
-- ARGV: 1 rid, 2 now ms ('' = Redis TIME), 3 inference (0|1), 4 rpm, 5 tpm,
--       6 concurrent (0 = no limit), 7 lease ms, 8 prompt estimate,
--       9 requested cap (0 = none), 10 default cap, 11 generates (0|1: embeddings do
--       not), 12 journal row, 13 count (backend calls: requests counted, slots held, caps
--       reserved), then per budget: limit, ttl ms (0 = never), reset order
-- Returns {status, reason, retry ms, cap, reserved, requests used (-1 = unlimited),
--          requests reset ms, tokens used (-1 = unlimited), tokens reset ms,
--          tokens retry ms, blocking budget index, budget used...}
--   status 1 admitted, 0 refused, 2 budget counters missing (reason lists them).
--   Budget values are after the reservation when admitted, as they stand otherwise.
-- A request of count c is c members in the request window and in the leases: rid, then
-- rid#2 .. rid#c (settle.lua and renew.lua name them alike).
local WINDOW, BUCKET, BUCKETS = 60000, 10000, 6
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local rid, inference, generates = ARGV[1], ARGV[3] == '1', ARGV[11] == '1'
local rpm, tpm, concurrent = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, estimate = tonumber(ARGV[7]), tonumber(ARGV[8])
local requested, default_cap = tonumber(ARGV[9]), tonumber(ARGV[10])
local count = tonumber(ARGV[13])
local nbudgets = (#ARGV - 13) / 3
local req_used, req_reset, tok_used, tok_reset, tok_retry = -1, 0, -1, 0, 0
local used, limits, orders = {}, {}, {}

local function reply(status, reason, wait, cap, reserved, blocker)
  local out = {status, reason, wait, cap, reserved, req_used, req_reset,
               tok_used, tok_reset, tok_retry, blocker}
  for i = 1, #used do out[#out + 1] = used[i] end
  return out
end

-- The exact 60 s request window.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
if rpm > 0 then
  req_used = redis.call('ZCARD', KEYS[1])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  req_reset = (oldest[2] and tonumber(oldest[2]) or now) + WINDOW - now
  if req_used + count > rpm then
    -- More than the limit never fits: a whole window is the honest least of the wait.
    if count > rpm then return reply(0, 'rpm', WINDOW, 0, 0, 0) end
    local idx = req_used + count - rpm - 1
    local frees = tonumber(redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')[2]) + WINDOW
    return reply(0, 'rpm', math.max(1, frees - now), 0, 0, 0)
  end
end

-- Budgets: every counter must be known (the caller rebuilds missing ones).
local missing = {}
for i = 1, nbudgets do
  local value = redis.call('GET', KEYS[4 + i])
  if not value then
    missing[#missing + 1] = tostring(i)
  else
    used[i] = tonumber(value)
    limits[i] = tonumber(ARGV[13 + 3 * (i - 1) + 1])
    orders[i] = tonumber(ARGV[13 + 3 * (i - 1) + 3])
  end
end
if #missing > 0 then
  used = {}
  return reply(2, table.concat(missing, ','), 0, 0, 0, 0)
end

-- The token window: the current 10 s bucket and the five before it.
local current = math.floor(now / BUCKET)
if tpm > 0 then
  local fields = redis.call('HGETALL', KEYS[2])
  local live = {}
  tok_used = 0
  for i = 1, #fields, 2 do
    local bucket, count = tonumber(fields[i]), tonumber(fields[i + 1])
    if bucket <= current - BUCKETS then
      redis.call('HDEL', KEYS[2], fields[i])
    elseif bucket <= current and count > 0 then
      tok_used = tok_used + count
      live[#live + 1] = {bucket, count}
    end
  end
  table.sort(live, function(a, b) return a[1] < b[1] end)
  tok_reset = ((live[1] and live[1][1] or current) + BUCKETS) * BUCKET - now
  if tok_used >= tpm then
    local left = tok_used
    for _, entry in ipairs(live) do
      left = left - entry[2]
      if left < tpm then
        tok_retry = math.max(1, (entry[1] + BUCKETS) * BUCKET - now)
        break
      end
    end
  end
end

if inference then
  -- Concurrency: leases that have not expired.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if concurrent > 0 then
    local live = redis.call('ZCARD', KEYS[3])
    if live + count > concurrent then
      local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]
      local wait = first and tonumber(first) - now or 1000
      return reply(0, 'concurrency', math.max(1, math.min(1000, wait)), 0, 0, 0)
    end
  end
  if tpm > 0 and tok_used >= tpm then
    return reply(0, 'tpm', tok_retry, 0, 0, 0)
  end
end

-- The reservation: prompt estimate plus a completion cap per call (embeddings: the
-- prompt alone).
local cap, reserved = 0, 0
if inference and (tpm > 0 or nbudgets > 0) then
  local remaining = nil
  for i = 1, nbudgets do
    local left = math.max(0, limits[i] - used[i])
    if remaining == nil or left < remaining then remaining = left end
  end
  local needed
  if not generates then
    needed = estimate
    if remaining ~= nil and estimate > remaining then needed = -estimate end
  else
    local ask = requested >= 1 and requested or nil
    if remaining == nil then
      cap = ask or default_cap
    else
      cap = ask or math.min(default_cap, math.floor((remaining - estimate) / count))
    end
    needed = estimate + count * math.max(cap, 1)
    if remaining ~= nil and (cap < 1 or estimate + count * cap > remaining) then
      needed = -needed
    end
  end
  if needed < 0 then
    local blocker, order = 0, -1
    for i = 1, nbudgets do
      if math.max(0, limits[i] - used[i]) < -needed and orders[i] > order then
        blocker, order = i, orders[i]
      end
    end
    return reply(0, 'budget', 0, 0, 0, blocker)
  end
  reserved = generates and (estimate + count * cap) or estimate
end

-- Admitted: record it.
local function slots(score)
  local members = {score, rid}
  for i = 2, count do
    members[#members + 1] = score
    members[#members + 1] = rid .. '#' .. i
  end
  return members
end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], unpack(slots(now)))
  redis.call('PEXPIRE', KEYS[1], WINDOW + 1000)
end
if inference then
  redis.call('ZADD', KEYS[3], unpack(slots(now + lease)))
  redis.call('PEXPIRE', KEYS[3], lease + WINDOW)
  if tpm > 0 and reserved > 0 then
    redis.call('HINCRBY', KEYS[2], current, reserved)
    redis.call('PEXPIRE', KEYS[2], (BUCKETS + 1) * BUCKET)
  end
  for i = 1, nbudgets do
    used[i] = redis.call('INCRBY', KEYS[4 + i], reserved)
    local ttl = tonumber(ARGV[13 + 3 * (i - 1) + 2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[4 + i], ttl) end
  end
  redis.call('HSET', KEYS[4], rid, 'R|' .. reserved .. '|' .. current .. '|' .. now .. '|' .. ARGV[12])
  redis.call('PEXPIRE', KEYS[4], 86400000)
end
return reply(1, '', 0, cap, reserved, 0)
