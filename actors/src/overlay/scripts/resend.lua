-- Puts a forwarded transaction that the primary lacks back at the end of the stream, to
-- be forwarded again (the primary's ledger keeps that exactly-once). Nothing if it is in
-- the stream already (`buffered`: an earlier resend).
--
-- KEYS[1] stream, KEYS[2] its lifecycle hash, KEYS[3] forwarded sorted set
-- ARGV[1] the transaction's body as the window holds it (packed: `body.rs`), ARGV[2]
-- transaction id, ARGV[3] now (unix ms)
--
-- Keys not in KEYS: none.
--
-- The lifecycle becomes `buffered` again (no expiry; `resent_at` set; the forwarded and
-- replicated times and the commit LSN of the lost commit removed). Its `records` stay:
-- overlay records it still holds are released when it is confirmed this time.
--
-- Returns 1 if it was put back, 0 if it was queued already.
if redis.call('HGET', KEYS[2], 'state') == 'buffered' then return 0 end
local sid = redis.call('XADD', KEYS[1], '*', 'tx', ARGV[1])
redis.call('HDEL', KEYS[2], 'forwarded_at', 'replicated_at', 'commit_lsn')
redis.call('HSET', KEYS[2], 'state', 'buffered', 'resent_at', ARGV[3])
redis.call('PERSIST', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
