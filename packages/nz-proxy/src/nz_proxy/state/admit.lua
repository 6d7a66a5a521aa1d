-- Admit one request for one API key, atomically (SPEC §4.4). Mirrors
-- nz_core.limiter.KeyState.admit; every key shares the API key's hash tag.
--
-- KEYS: 1 request window (zset rid -> ms), 2 token window (hash bucket -> tokens),
--       3 leases (zset rid -> expiry ms), 4 journal (hash rid -> reservation),
--       5.. one budget counter per configured period
-- ARGV: 1 rid, 2 now ms ('' = Redis TIME), 3 inference (0|1), 4 rpm, 5 tpm,
--       6 concurrent (0 = no limit), 7 lease ms, 8 prompt estimate,
--       9 requested cap (0 = none), 10 default cap, 11 journal row,
--       then per budget: limit, ttl ms (0 = never expires), reset order
-- Returns {status, reason, retry ms, cap, reserved, requests used, requests reset ms,
--          tokens used, tokens reset ms, budget index, now, budget used...}
--   status 1 admitted, 0 refused, 2 budget counters missing (reason lists them)
local WINDOW, BUCKET, BUCKETS = 60000, 10000, 6
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local rid, inference = ARGV[1], ARGV[3] == '1'
local rpm, tpm, concurrent = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, estimate = tonumber(ARGV[7]), tonumber(ARGV[8])
local requested, default_cap = tonumber(ARGV[9]), tonumber(ARGV[10])
local nbudgets = (#ARGV - 11) / 3
local req_used, req_reset, tok_used, tok_reset = -1, 0, -1, 0

local function refuse(reason, wait, budget)
  return {0, reason, wait, 0, 0, req_used, req_reset, tok_used, tok_reset, budget or 0, now}
end

-- The exact 60 s request window.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
if rpm > 0 then
  req_used = redis.call('ZCARD', KEYS[1])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  req_reset = (oldest[2] and tonumber(oldest[2]) or now) + WINDOW - now
  if req_used >= rpm then
    local idx = req_used - rpm
    local frees = tonumber(redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')[2]) + WINDOW
    return refuse('rpm', math.max(1, frees - now))
  end
end

local current = math.floor(now / BUCKET)
if inference then
  -- Concurrency: leases that have not expired.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if concurrent > 0 then
    local live = redis.call('ZCARD', KEYS[3])
    if live >= concurrent then
      local first = tonumber(redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2])
      return refuse('concurrency', math.max(1, math.min(1000, first - now)))
    end
  end
  -- The token window: the current 10 s bucket and the five before it.
  if tpm > 0 then
    local fields = redis.call('HGETALL', KEYS[2])
    local live = {}
    tok_used = 0
    for i = 1, #fields, 2 do
      local bucket, count = tonumber(fields[i]), tonumber(fields[i + 1])
      if bucket <= current - BUCKETS then
        redis.call('HDEL', KEYS[2], fields[i])
      elseif bucket <= current then
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
          return refuse('tpm', math.max(1, (entry[1] + BUCKETS) * BUCKET - now))
        end
      end
    end
  end
end

-- Budgets: every configured period must hold the reservation.
local used, limits, orders = {}, {}, {}
local shown = nbudgets
if inference then
  local missing = {}
  for i = 1, nbudgets do
    local value = redis.call('GET', KEYS[4 + i])
    if not value then
      missing[#missing + 1] = tostring(i)
    else
      used[i] = tonumber(value)
      limits[i] = tonumber(ARGV[11 + 3 * (i - 1) + 1])
      orders[i] = tonumber(ARGV[11 + 3 * (i - 1) + 3])
    end
  end
  if #missing > 0 then
    return {2, table.concat(missing, ','), 0, 0, 0, req_used, req_reset, tok_used, tok_reset, 0, now}
  end
else
  -- Listings reserve nothing, but report the counters that exist (-1: unknown).
  for i = 1, nbudgets do
    local value = redis.call('GET', KEYS[4 + i])
    used[i] = value and tonumber(value) or -1
  end
  nbudgets = 0
end

local cap, reserved = 0, 0
if inference and (tpm > 0 or nbudgets > 0) then
  local ask = requested >= 1 and requested or nil
  if nbudgets > 0 then
    local remaining = nil
    for i = 1, nbudgets do
      local left = math.max(0, limits[i] - used[i])
      if remaining == nil or left < remaining then remaining = left end
    end
    cap = ask or math.min(default_cap, remaining - estimate)
    if cap < 1 or estimate + cap > remaining then
      local needed, blocker, order = estimate + math.max(cap, 1), 0, -1
      for i = 1, nbudgets do
        if math.max(0, limits[i] - used[i]) < needed and orders[i] > order then
          blocker, order = i, orders[i]
        end
      end
      return refuse('budget', 0, blocker)
    end
  else
    cap = ask or default_cap
  end
  reserved = estimate + cap
end

-- Admitted: record it.
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, rid)
  redis.call('PEXPIRE', KEYS[1], WINDOW + 1000)
end
local result = {1, '', 0, cap, reserved, req_used, req_reset, tok_used, tok_reset, 0, now}
if not inference then
  for i = 1, shown do result[#result + 1] = used[i] end
end
if inference then
  redis.call('ZADD', KEYS[3], now + lease, rid)
  redis.call('PEXPIRE', KEYS[3], lease + WINDOW)
  if tpm > 0 and reserved > 0 then
    redis.call('HINCRBY', KEYS[2], current, reserved)
    redis.call('PEXPIRE', KEYS[2], (BUCKETS + 1) * BUCKET)
  end
  for i = 1, nbudgets do
    result[#result + 1] = redis.call('INCRBY', KEYS[4 + i], reserved)
    local ttl = tonumber(ARGV[11 + 3 * (i - 1) + 2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[4 + i], ttl) end
  end
  redis.call('HSET', KEYS[4], rid, 'R|' .. reserved .. '|' .. current .. '|' .. now .. '|' .. ARGV[11])
  redis.call('PEXPIRE', KEYS[4], 86400000)
end
return result
