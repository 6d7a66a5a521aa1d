-- Count one call against an API key's listing allowance (nz_proxy.admission.listing):
-- an exact 60 s window of its own, apart from admit.lua's request window. Mirrors
-- nz_core.windows.check_window.
-- KEYS: 1 listing window (zset rid -> ms)   ARGV: 1 rid, 2 now ms ('' = Redis TIME), 3 limit
-- Returns {allowed (0|1), used before this call, remaining, retry ms, reset ms}
local WINDOW = 60000
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
local used = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local reset = (oldest[2] and tonumber(oldest[2]) or now) + WINDOW - now
if used >= limit then
  local idx = used - limit
  local frees = tonumber(redis.call('ZRANGE', KEYS[1], idx, idx, 'WITHSCORES')[2]) + WINDOW
  return {0, used, 0, math.max(1, frees - now), reset}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], WINDOW + 1000)
return {1, used, limit - used - 1, 0, reset}
