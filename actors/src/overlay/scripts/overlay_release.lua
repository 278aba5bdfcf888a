-- Shared by settle.lua (dead transactions) and replicated.lua (replicated ones), prepended
-- to each at compile time (see `scripts/mod.rs`): releases the overlay records whose
-- latest writer was `tx`, with their index entries. A record written again by a later
-- transaction keeps its overlay.
--
-- Takes the lifecycle hash key and the transaction id from its caller; every other key it
-- touches is read from Redis, none is in KEYS: the record hashes from the lifecycle's
-- `records` (JSON list of keys, written by buffer.lua), the index sets from each record's
-- `_idx` (JSON list of keys); the member removed from them is the record id, the record
-- key's last `:`-separated part (see `Keys::record`).
local function release_overlay(lifecycle, tx)
  local records = redis.call('HGET', lifecycle, 'records')
  if not records then return end
  for _, key in ipairs(cjson.decode(records)) do
    if redis.call('HGET', key, '_tx') == tx then
      local indexes = redis.call('HGET', key, '_idx')
      if indexes then
        local id = string.match(key, '[^:]+$')
        for _, index in ipairs(cjson.decode(indexes)) do
          redis.call('SREM', index, id)
        end
      end
      redis.call('DEL', key)
    end
  end
end

