-- Undoes a staging that will not be committed (stage.lua): a chunk failed, the commit
-- found the key used meanwhile, or the service stopped between chunks (the BufferActor's
-- sweep finds stagings older than `STAGING_ABANDONED`). Its records are released as a dead
-- transaction's (release_overlay, overlay_release.lua): each goes back to what it was
-- before, or is removed if the staging made it. The index entries its records left
-- (`m:i`, removals deferred to the commit) are removed once the records are released,
-- each unless its record is in that set again (restored to its previous writer's image):
-- a record removed because its previous writer died or was replicated meanwhile leaves
-- none behind.
--
-- KEYS[1] staging set, KEYS[2] the transaction's staging hash
-- ARGV[1] transaction id, ARGV[2] most records released per call, ARGV[3] the site's
-- prefix (`opsdb:{site}:`)
--
-- Keys not in KEYS: release_overlay's (record hashes, index sets, previous writers'
-- lifecycles, read from Redis).
--
-- The first call stops the staging (`next` = -1: a chunk still on its way writes
-- nothing) and gathers its chunks' lists into `records` and `undo`, as a lifecycle holds
-- them, and `moved` (the `m:i` lists); each call then releases at most ARGV[2] records,
-- and the last one goes through `moved` (one HGET per entry: as many as the staging's
-- updates moved, none for inserts). Returns 1 once the staging is
-- gone (also if there was none), 0 if records are left for the next call.
local staging, staged = KEYS[1], KEYS[2]
local tx, budget, site = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local next_chunk = redis.call('HGET', staged, 'next')
if not next_chunk then
  redis.call('DEL', staged)
  redis.call('ZREM', staging, tx)
  return 1
end
if tonumber(next_chunk) ~= -1 then
  local fields = redis.call('HGETALL', staged)
  local records, undone, moved, gone = {}, {}, {}, {}
  for j = 1, #fields, 2 do
    local name, list = fields[j], fields[j + 1]
    local kind = string.sub(name, 1, 2)
    if kind == 'r:' or kind == 'u:' or kind == 'm:' then
      gone[#gone + 1] = name
      if #list > 2 then
        local into = (kind == 'r:' and records) or (kind == 'u:' and undone) or moved
        into[#into + 1] = string.sub(list, 2, -2)
      end
    end
  end
  if #gone > 0 then redis.call('HDEL', staged, unpack(gone)) end
  redis.call('HSET', staged, 'next', -1, 'records', '[' .. table.concat(records, ',') .. ']')
  if #undone > 0 then
    redis.call('HSET', staged, 'undo', '[' .. table.concat(undone, ',') .. ']')
  end
  if #moved > 0 then
    redis.call('HSET', staged, 'moved', '[' .. table.concat(moved, ',') .. ']')
  end
end
local _, done = release_overlay(staged, tx, budget, true, site)
if not done then return 0 end
local moved = redis.call('HGET', staged, 'moved')
if moved then
  for _, entry in ipairs(cjson.decode(moved)) do
    if not in_index(entry[1], entry[2]) then index_remove(entry[1], entry[2]) end
  end
  flush_indexes()
end
redis.call('DEL', staged)
redis.call('ZREM', staging, tx)
return 1
