-- Rows are on the ledger: forget their journal entries and their unledgered marks.
-- A mark cleared moves the epoch, so that a rebuild which read the ledger before the
-- row landed does not set its counter (seed.lua).
-- KEYS: 1 journal, 2 rows not on the ledger yet, 3 the ledger epoch   ARGV: request ids
redis.call('HDEL', KEYS[1], unpack(ARGV))
if redis.call('HDEL', KEYS[2], unpack(ARGV)) > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], 3600000)
end
return 0
