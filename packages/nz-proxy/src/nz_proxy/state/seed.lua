-- Set a budget counter that is unknown (rebuilt from the ledger); a known one wins.
-- KEYS: 1 counter   ARGV: 1 tokens, 2 ttl ms (0 = never expires)
-- Returns 1 when set, 0 when it already existed.
local ttl = tonumber(ARGV[2])
local set
if ttl > 0 then
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ttl)
else
  set = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if set then return 1 end
return 0
