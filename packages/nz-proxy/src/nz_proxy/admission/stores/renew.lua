-- Extend a running request's concurrency lease (long streams renew it). An expired
-- lease stays expired: its slot may already be someone else's.
-- KEYS: 1 leases   ARGV: 1 rid, 2 lease ms, 3 now ms ('' = Redis TIME), 4 count (its
--       slots: rid, rid#2 .. rid#count, as admit.lua made them)
-- Returns 1 when renewed, 0 when the lease is gone.
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
else
  now = tonumber(ARGV[3])
end
local expiry = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not expiry) or tonumber(expiry) <= now then return 0 end
local renewed = now + tonumber(ARGV[2])
local slots = {renewed, ARGV[1]}
for i = 2, tonumber(ARGV[4]) do
  slots[#slots + 1] = renewed
  slots[#slots + 1] = ARGV[1] .. '#' .. i
end
redis.call('ZADD', KEYS[1], 'XX', unpack(slots))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) + 60000)
return 1
