-- Shared by settle.lua (dead transactions) and replicated.lua (replicated ones), prepended
-- to each at compile time (see `scripts/mod.rs`): releases the overlay records whose
-- latest writer was `tx`, with their index entries. A record written again by a later
-- transaction keeps its overlay.
--
-- Bounded: it examines at most `budget` records (each: HGET, HGET, one ZREM per index,
-- DEL). When the transaction has more, the lifecycle's `records` is rewritten with the
-- ones still to release and it returns `false`; the caller's next call continues from
-- there (releasing a record twice is harmless: the `_tx` check); once the last is
-- released the `records` field is removed, so `records` always holds what is still to
-- release. Returns the number of
-- records examined and whether the transaction's release is complete.
--
-- Takes the lifecycle hash key and the transaction id from its caller; every other key it
-- touches is read from Redis, none is in KEYS: the record hashes from the lifecycle's
-- `records` (JSON list of keys, written by buffer.lua), the index sets from each record's
-- `_idx` (JSON list of keys); the member removed from them is the record id, the record
-- key's last `:`-separated part (see `Keys::record`).
local function release_overlay(lifecycle, tx, budget)
  local records = redis.call('HGET', lifecycle, 'records')
  if not records then return 0, true end
  local keys = cjson.decode(records)
  local n = math.min(#keys, budget)
  for i = 1, n do
    local key = keys[i]
    if redis.call('HGET', key, '_tx') == tx then
      local indexes = redis.call('HGET', key, '_idx')
      if indexes then
        local id = string.match(key, '[^:]+$')
        for _, index in ipairs(cjson.decode(indexes)) do
          redis.call('ZREM', index, id)
        end
      end
      redis.call('DEL', key)
    end
  end
  if n < #keys then
    local rest = {}
    for i = n + 1, #keys do rest[#rest + 1] = keys[i] end
    redis.call('HSET', lifecycle, 'records', cjson.encode(rest))
    return n, false
  end
  -- Released whole: the list has served (it would only keep the lifecycle large).
  redis.call('HDEL', lifecycle, 'records')
  return n, true
end

