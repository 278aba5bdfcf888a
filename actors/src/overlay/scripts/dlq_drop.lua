-- Removes a dead letter for good; its lifecycle stays `dead`, gets `dropped_at` and
-- expires after the lifecycle retention (until then it had none: a dead transaction's
-- lifecycle stays as long as its dead letter may be retried).
--
-- KEYS[1] dead-letter stream
-- ARGV[1] dead-letter id, ARGV[2] lifecycle key prefix, ARGV[3] now (unix ms),
-- ARGV[4] lifecycle retention (seconds)
--
-- Keys not in KEYS: the transaction's lifecycle hash, derived as ARGV[2] .. the
-- `transaction_id` field read from the dead letter.
--
-- Returns the number of dead letters removed (0 or 1).
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
if not entry then return 0 end
for i = 1, #entry[2], 2 do
  if entry[2][i] == 'transaction_id' and entry[2][i + 1] ~= '' then
    local lifecycle = ARGV[2] .. entry[2][i + 1]
    if redis.call('EXISTS', lifecycle) == 1 then
      redis.call('HSET', lifecycle, 'dropped_at', ARGV[3])
      redis.call('EXPIRE', lifecycle, tonumber(ARGV[4]))
    end
  end
end
return redis.call('XDEL', KEYS[1], ARGV[1])
