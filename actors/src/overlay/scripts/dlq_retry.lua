-- Puts a dead letter back at the end of the buffer's stream: a new stream entry with the
-- same body, byte for byte (packed, `body.rs`, or whatever a poison entry held), lifecycle
-- `buffered` again (its retention expiry removed), `dlq_retries` counted.
--
-- KEYS[1] dead-letter stream, KEYS[2] stream
-- ARGV[1] dead-letter id, ARGV[2] lifecycle key prefix
--
-- Keys not in KEYS: the transaction's lifecycle hash, derived as ARGV[2] .. the
-- `transaction_id` field read from the dead letter; none for a dead letter without one (a
-- stream entry that was not a decodable transaction: retried, it is dead-lettered again
-- unless its content was repaired in between).
--
-- Returns the new stream id, or false if there is no such dead letter.
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return false end
local f = {}
for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
local sid = redis.call('XADD', KEYS[2], '*', 'tx', f['tx'])
redis.call('XDEL', KEYS[1], ARGV[1])
if f['transaction_id'] and f['transaction_id'] ~= '' then
  local lifecycle = ARGV[2] .. f['transaction_id']
  redis.call('HSET', lifecycle, 'state', 'buffered')
  redis.call('HINCRBY', lifecycle, 'dlq_retries', 1)
  redis.call('PERSIST', lifecycle)
end
return sid
