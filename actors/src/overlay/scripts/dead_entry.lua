-- Dead-letters a stream entry that is not a transaction the forwarder can decode (written
-- by hand, or damaged): it goes to the dead-letter stream with the reason and its delivery
-- count, without a transaction id (there is none to trust, so no lifecycle changes), and
-- is acknowledged and removed in the same step.
--
-- KEYS[1] stream, KEYS[2] dead-letter stream
-- ARGV[1] group, ARGV[2] stream id, ARGV[3] what its `tx` field held, byte for byte,
-- ARGV[4] reason, ARGV[5] now (unix ms)
--
-- Keys not in KEYS: none.
--
-- Bounded: one entry, a handful of commands.
--
-- Returns 1 if the entry was dead-lettered, 0 if it was no longer pending (settled or
-- dead-lettered already).
local stream, dlq, group, sid = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local pending = redis.call('XPENDING', stream, group, sid, sid, 1)
if not pending[1] then return 0 end
redis.call('XADD', dlq, '*', 'tx', ARGV[3], 'transaction_id', '', 'sqlstate', '',
  'reason', ARGV[4], 'attempts', pending[1][4], 'stream_id', sid, 'dead_at', ARGV[5])
redis.call('XACK', stream, group, sid)
redis.call('XDEL', stream, sid)
return 1
