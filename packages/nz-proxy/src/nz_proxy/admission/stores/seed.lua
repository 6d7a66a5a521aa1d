-- Set a budget counter that is unknown (rebuilt from the ledger); a known one wins.
-- The time of the rebuild is kept beside it: a request admitted before then, whose
-- reservation was lost with the old counter, adds its tokens when it settles.
-- The ledger read must be whole: no row may be marked as not on it yet, and the epoch
-- read before the ledger must not have moved since (a marked row landed meanwhile).
-- KEYS: 1 counter, 2 its rebuild time, 3 rows not on the ledger yet, 4 the ledger epoch
-- ARGV: 1 tokens, 2 ttl ms (0 = never expires), 3 now ms ('' = Redis TIME),
--       4 the epoch read before the ledger ('-' = do not check)
-- Returns 1 when set, 0 when it already existed, -1 when the ledger read is stale.
if ARGV[4] ~= '-' then
  if redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
  if (redis.call('GET', KEYS[4]) or '') ~= ARGV[4] then return -1 end
end
local ttl = tonumber(ARGV[2])
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[3])
end
local set
if ttl > 0 then
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl)
else
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if not set then return 0 end
if ttl > 0 then
  redis.call('SET', KEYS[2], now, 'PX', ttl)
else
  redis.call('SET', KEYS[2], now)
end
return 1
