-- Marks forwarded transactions whose commit LSN the replica has replayed as `replicated`,
-- starts their lifecycle's retention, and removes the overlay records whose latest writer
-- each was (the replica now answers for them), with their index entries.
--
-- KEYS[1] forwarded sorted set
-- ARGV[1] replay LSN score (rounded down), ARGV[2] now (unix ms), ARGV[3] lifecycle key
-- prefix, ARGV[4] retention (seconds), ARGV[5] most transactions per call, ARGV[6] most
-- records released per call
--
-- Keys not in KEYS: each due transaction's lifecycle hash, derived as ARGV[3] .. the
-- transaction id read from the sorted set; release_overlay's (overlay_release.lua: record
-- hashes and index sets read from Redis).
--
-- Bounded work per call (Redis runs a script alone): at most ARGV[5] transactions (one
-- ZRANGEBYSCORE, then per transaction HGET + HSET + EXPIRE + ZREM) and ARGV[6] record
-- releases (about 5 commands each); with the tracker's 50 and 100 (`TXS_PER_CALL`,
-- `RECORDS_PER_CALL`) that is at most about 900 commands, under 3 ms. A transaction is marked `replicated` and leaves the
-- sorted set only once its last record is released; until then it stays due, so the next
-- call, or the next poll after a crash, continues its release.
--
-- Returns {transactions marked, 1 if more may be due (call again) else 0, the ids marked}.
-- release_overlay: overlay_release.lua.
local limit, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
local marked, ids = 0, {}
for _, tx in ipairs(due) do
  if budget <= 0 then return {marked, 1, ids} end
  local lifecycle = ARGV[3] .. tx
  local used, done = release_overlay(lifecycle, tx, budget, false)
  budget = budget - used
  if not done then return {marked, 1, ids} end
  redis.call('HSET', lifecycle, 'state', 'replicated', 'replicated_at', ARGV[2])
  redis.call('EXPIRE', lifecycle, tonumber(ARGV[4]))
  redis.call('ZREM', KEYS[1], tx)
  marked = marked + 1
  ids[marked] = tx
end
if #due == limit then return {marked, 1, ids} end
return {marked, 0, ids}
