-- Shared by settle.lua (dead transactions) and replicated.lua (replicated ones), prepended
-- to each at compile time (see `overlay_script!`): releases the overlay records whose
-- latest writer was `tx`, with their index entries. A record written again by a later
-- transaction keeps its overlay.
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

