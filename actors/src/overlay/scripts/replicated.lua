-- Marks every forwarded transaction whose commit LSN the replica has replayed as
-- `replicated`, starts its lifecycle's retention, and removes the overlay records whose
-- latest writer it was (the replica now answers for them), with their index entries.
--
-- KEYS[1] forwarded sorted set
-- ARGV[1] replay LSN score (rounded down), ARGV[2] now (unix ms), ARGV[3] lifecycle key
-- prefix, ARGV[4] retention (seconds), ARGV[5] most transactions per call
--
-- Keys not in KEYS: each due transaction's lifecycle hash, derived as ARGV[3] .. the
-- transaction id read from the sorted set; release_overlay's (overlay_release.lua: record
-- hashes and index sets read from Redis).
--
-- Returns the number of transactions marked. release_overlay: overlay_release.lua.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
for _, tx in ipairs(due) do
  local lifecycle = ARGV[3] .. tx
  release_overlay(lifecycle, tx)
  redis.call('HSET', lifecycle, 'state', 'replicated', 'replicated_at', ARGV[2])
  redis.call('EXPIRE', lifecycle, tonumber(ARGV[4]))
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
