-- Marks forwarded transactions that the replica has confirmed (its replay LSN is past
-- their commit LSN AND its ledger holds them: `replica/confirm.rs` looked them up) as
-- `replicated`, starts their lifecycle's retention, and removes the overlay records whose
-- latest writer each was (the replica now answers for them), with their index entries.
--
-- KEYS[1] forwarded sorted set
-- ARGV[1] replay LSN score (rounded down), ARGV[2] now (unix ms), ARGV[3] lifecycle key
-- prefix, ARGV[4] retention (seconds), ARGV[5] most records released per call, ARGV[6..]
-- the confirmed transaction ids, in the forwarded set's order
--
-- Keys not in KEYS: each transaction's lifecycle hash, derived as ARGV[3] .. its id;
-- release_overlay's (overlay_release.lua: record hashes and index sets read from Redis).
--
-- A transaction no longer in the set (marked by an earlier call), or whose score is above
-- the replay position (never early, whatever the caller sent), is passed over.
--
-- Bounded work per call (Redis runs a script alone): the caller sends at most
-- `TXS_PER_CALL` ids (per transaction ZSCORE + HGET + HSET + EXPIRE + ZREM, and for a
-- lifecycle whose list was long HGETALL + DEL + HSET) and at most
-- ARGV[5] record releases happen (about 5 commands each); with 25 and 50
-- (`TXS_PER_CALL`, `RECORDS_PER_CALL`) that is at most about 450 commands. A
-- transaction is marked `replicated` and leaves the sorted set only once its last record
-- is released; until then it stays, so the next call, or the next poll after a crash,
-- continues its release.
--
-- Returns {ids done (marked or passed over) from the first, the ids marked}: fewer done
-- than sent when the record budget ran out (the caller sends the rest again).
-- release_overlay: overlay_release.lua.
-- What a replicated lifecycle keeps for `replica.retention` is its small fields (its
-- lists are released). Redis never turns a hash back into a listpack once a value over
-- `hash-max-listpack-value` (64 bytes: a `records` list of more than one record) made it
-- a hash table (632 bytes instead of about 200 for a start-observation's), so a
-- lifecycle whose list was that long is written anew (the service's ACL has no `OBJECT`
-- to ask); a `stream_id` of an older layout goes (nothing reads it).
local function compact(lifecycle)
  local fields = redis.call('HGETALL', lifecycle)
  local kept = {}
  for j = 1, #fields, 2 do
    if fields[j] ~= 'stream_id' then
      kept[#kept + 1] = fields[j]
      kept[#kept + 1] = fields[j + 1]
    end
  end
  redis.call('DEL', lifecycle)
  if #kept > 0 then redis.call('HSET', lifecycle, unpack(kept)) end
end

local budget, replay = tonumber(ARGV[5]), tonumber(ARGV[1])
local done, ids = 0, {}
for i = 6, #ARGV do
  local tx = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], tx)
  if score and tonumber(score) <= replay then
    if budget <= 0 then return {done, ids} end
    local lifecycle = ARGV[3] .. tx
    local used, finished, listed = release_overlay(lifecycle, tx, budget, false)
    budget = budget - used
    if not finished then return {done, ids} end
    if listed > 64 then compact(lifecycle) end
    redis.call('HSET', lifecycle, 'state', 'replicated', 'replicated_at', ARGV[2])
    redis.call('EXPIRE', lifecycle, tonumber(ARGV[4]))
    redis.call('ZREM', KEYS[1], tx)
    ids[#ids + 1] = tx
  end
  done = done + 1
end
return {done, ids}
