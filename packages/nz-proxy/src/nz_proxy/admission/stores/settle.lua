-- Settle one admitted request: its reservation is replaced by the tokens it used,
-- exactly once (SPEC §4.4). Mirrors nz_core.limiter.KeyState.settle.
--
-- KEYS: 1 token window, 2 leases, 3 journal, 4 rows not on the ledger yet, then the n
--       budget counters it was admitted on, then their n rebuild times
-- ARGV: 1 rid, 2 now ms ('' = Redis TIME), 3 tokens used, 4 token window kept (0|1),
--       5 audit row to journal ('' = none), 6 admitted at ms ('' = unknown),
--       7 count (its lease slots: rid, rid#2 .. rid#count, as admit.lua made them)
-- Returns 1 settled, 2 abandoned (its lease ran out and it was reaped), 0 unknown.
local BUCKET, BUCKETS = 10000, 6
-- A mark outlives a process that died before writing its row by this long at most.
local UNLEDGERED_MS = 5000
local rid = ARGV[1]
local n = (#KEYS - 4) / 2
local slots = {rid}
for i = 2, tonumber(ARGV[7]) do slots[i] = rid .. '#' .. i end
redis.call('ZREM', KEYS[2], unpack(slots))
local entry = redis.call('HGET', KEYS[3], rid)
if not entry then
  -- Its reservation was lost (Redis lost its state). A counter rebuilt from the
  -- ledger since it was admitted cannot have counted it (its row is written only
  -- after this), so the tokens it used are added there.
  -- A counter not rebuilt yet will be, from the ledger, which does not have this
  -- request until its row is written (by this process, maybe after another process
  -- rebuilds): the row is marked unledgered until then, and rebuilds wait for it.
  local unledgered = false
  for i = 5, 4 + n do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      unledgered = true
    elseif ARGV[6] ~= '' then
      local rebuilt = redis.call('GET', KEYS[i + n])
      if rebuilt and tonumber(rebuilt) > tonumber(ARGV[6]) then
        redis.call('INCRBY', KEYS[i], ARGV[3])
      end
    end
  end
  if unledgered and ARGV[5] ~= '' then
    redis.call('HSET', KEYS[4], rid, 1)
    redis.call('PEXPIRE', KEYS[4], UNLEDGERED_MS)
  end
  return 0
end
local kind = string.sub(entry, 1, 2)
-- Settled already: a retry of a settlement Redis ran after the caller gave up on it.
if kind == 'S|' then return 1 end
if kind ~= 'R|' then return 2 end
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[2])
end
local first = string.find(entry, '|', 3, true)
local second = string.find(entry, '|', first + 1, true)
local reserved = tonumber(string.sub(entry, 3, first - 1))
local bucket = string.sub(entry, first + 1, second - 1)
local used = tonumber(ARGV[3])
local delta = used - reserved
for i = 5, 4 + n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], delta) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
if ARGV[4] == '1' then
  -- (Lua writes -0 for a negated zero, which Redis refuses as an integer.)
  if reserved > 0 and redis.call('HINCRBY', KEYS[1], bucket, 0 - reserved) <= 0 then
    redis.call('HDEL', KEYS[1], bucket)
  end
  if used > 0 then
    redis.call('HINCRBY', KEYS[1], math.floor(now / BUCKET), used)
    redis.call('PEXPIRE', KEYS[1], (BUCKETS + 1) * BUCKET)
  end
end
if ARGV[5] == '' then
  redis.call('HDEL', KEYS[3], rid)
else
  redis.call('HSET', KEYS[3], rid, 'S|' .. now .. '|' .. ARGV[5])
end
return 1
