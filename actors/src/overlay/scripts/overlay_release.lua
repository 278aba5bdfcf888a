-- Shared by settle.lua (dead and forwarded transactions), replicated.lua (replicated
-- ones) and abort.lua (abandoned stagings, released as dead), prepended to each at
-- compile time (see `scripts/mod.rs`).
--
-- `release_overlay` releases the overlay records a transaction `tx` wrote:
-- - replicated (`dead` false): the records whose latest writer it was are removed with
--   their index entries (the replica answers for them now); a record written again by a
--   later transaction keeps its overlay;
-- - dead (`dead` true): its effect is undone, so an earlier write of the same record that
--   is still pending shows again. As the latest writer, its undo entry (`_u:{tx}`, see
--   buffer.lua) is restored if the previous writer still holds the record (forwarded, its
--   release not done yet); otherwise (it made the record, or the previous writer is
--   replicated: the replica has its image) the record is removed. Under later writers
--   (still buffered: settlement follows the stream), its undo entry is folded into theirs,
--   so that their undo goes back to before it: each column to the lowest writer above it
--   that overwrote the column, the rest into the record at once (a chain of more than
--   CHAIN buffered writes of one record is left as it is: see `fold`).
-- `drop_undo` drops the undo entries of a forwarded transaction: it can no longer die.
--
-- Bounded: each examines at most `budget` records (a release: HGET, HGET, DEL, its index
-- entries removed at the end with one ZREM per index set, `flush_indexes`; an undo: about
-- ten commands more, one lifecycle's `records` searched as text, and for a writer under
-- later ones at most CHAIN undo entries read and written).
-- When the transaction has more, the position of the next in its lifecycle's list
-- (`records`, `undo`) is kept beside it (`records_at`, `undo_at`) and `false` returned;
-- the caller's next call continues from there (doing a record twice is harmless: the
-- `_tx` check, the undo entry gone). Once the last is done the list and its position are
-- removed, so the list from its position always holds what is still to do. Returns the
-- number of records examined, whether the transaction is done, and the length of the
-- list's text as read (replicated.lua compacts a lifecycle whose list was long).
--
-- Takes the lifecycle hash key and the transaction id from its caller; every other key it
-- touches is read from Redis, none is in KEYS: the record hashes from the lifecycle's
-- `records` / `undo` (JSON lists of `{table}:{id}`, the record keys without the site's
-- record prefix, which is the lifecycle key's: written by buffer.lua), the index sets from each
-- record's `_idx` and undo entries (index keys), a previous writer's lifecycle as the
-- caller's lifecycle key with `tx` replaced by that writer's id (the same prefix); the
-- member removed from index sets is the record id, the record key's last `:`-separated
-- part (see `Keys::record`).

local function record_id(key)
  return string.match(key, '[^:]+$')
end

-- The record's `_idx` as a table column -> index key (index_list.lua).
local function index_of(key)
  return decode_idx(key, redis.call('HGET', key, '_idx'))
end

local function save_index(key, idx)
  local text = encode_idx(key, idx)
  if text then
    redis.call('HSET', key, '_idx', text)
  else
    redis.call('HDEL', key, '_idx')
  end
end

-- Moves the record's entry for `column` back to `set` (an undo entry's `x` value: a short
-- name, a whole key, or false for no entry).
local function reindex(key, idx, column, set)
  set = whole_index(key, set)
  local id = record_id(key)
  if idx[column] then index_remove(idx[column], id) end
  if set then index_add(set, id) end
  idx[column] = set or nil
end

local function drop_record(key)
  local id = record_id(key)
  for _, index in pairs(index_of(key)) do
    index_remove(index, id)
  end
  redis.call('DEL', key)
end

-- The lifecycles' lists (`records`, `undo`) hold record keys without the site's record
-- prefix (buffer.lua): `{table}:{id}`. The prefix is the lifecycle key's site prefix
-- (`opsdb:{site}:`, before `tx:{tx}`) + `rec:`.
local function record_prefix(lifecycle, tx)
  return string.sub(lifecycle, 1, #lifecycle - #tx - #'tx:') .. 'rec:'
end

-- Where the release of `list` goes on: `at` (`{field}_at`) is `{position}:{length}`, the
-- byte position of the next item in a list of that length. A list of another length
-- (rewritten by an older build, which did not know the position) is read from its start.
local function position(list, at)
  local pos, len = string.match(at or '', '^(%d+):(%d+)$')
  if pos and tonumber(len) == #list then return tonumber(pos) end
  return 1
end

-- Whether `writer` (its lifecycle key) will still release `key` (`short`: as its list
-- holds it): forwarded (or buffered) and `key` still in its `records`.
local function holds(writer, short)
  local life = redis.call('HMGET', writer, 'state', 'records', 'records_at')
  if life[1] ~= 'buffered' and life[1] ~= 'forwarded' then return false end
  if not life[2] then return false end
  -- What is before `records_at` is released already (in_chunks).
  local from = position(life[2], life[3])
  -- A list written before the lists were shortened holds whole keys.
  local whole = record_prefix(writer, string.match(writer, '[^:]+$')) .. short
  return string.find(life[2], '"' .. short .. '"', from, true) ~= nil
    or string.find(life[2], '"' .. whole .. '"', from, true) ~= nil
end

-- Puts a column of an undo entry back: its previous JSON text, or absent (`false`).
local function set_column(key, column, value)
  if value then
    redis.call('HSET', key, column, value)
  else
    redis.call('HDEL', key, column)
  end
end

-- The record as it was before the dead latest writer `tx`.
local function restore(key, tx, undo)
  for column, value in pairs(undo.c) do set_column(key, column, value) end
  if undo.x then
    local idx = index_of(key)
    for column, set in pairs(undo.x) do reindex(key, idx, column, set) end
    save_index(key, idx)
  end
  redis.call('HSET', key, '_tx', undo.t)
  if undo.p then
    redis.call('HSET', key, '_partial', '1')
  else
    redis.call('HDEL', key, '_partial')
  end
  redis.call('HDEL', key, '_u:' .. tx)
end

-- How many buffered writers above a dead one `fold` walks to find the one right above it.
local CHAIN = 16

-- The writers above the dead `tx`, from `top` down to the one right above `tx` (each
-- {w = writer, u = its undo entry}); nil if the chain is broken or deeper than CHAIN.
local function chain_above(key, tx, top)
  local chain, w = {}, top
  for _ = 1, CHAIN do
    local text = redis.call('HGET', key, '_u:' .. w)
    if not text then return nil end
    local u = cjson.decode(text)
    chain[#chain + 1] = {w = w, u = u}
    if u.t == tx then return chain end
    w = u.t
  end
  return nil
end

-- Sends a column (or index entry, `part` 'x') of what was before the dead writer to the
-- lowest writer above it that overwrote it (its undo entry now leads there); if none
-- did, the record shows it again at once. Returns false if the record was patched.
local function hand_up(chain, part, column, value)
  for i = #chain, 1, -1 do
    local entries = chain[i].u[part]
    if entries and entries[column] ~= nil then
      entries[column] = value
      chain[i].dirty = true
      return true
    end
  end
  return false
end

-- The dead `tx` lies under the latest writer `top`: the undo entries above it now lead
-- to what was before `tx`, and what only `tx` wrote goes back at once.
local function fold(key, tx, top, mine)
  local chain = chain_above(key, tx, top)
  if not chain then return end
  local above = chain[#chain]
  if not mine then
    -- `tx` made the record: below it the overlay held nothing, so what is left of it is
    -- laid over the replica's row (none, for an insert), so are the images the writers
    -- above would restore, and `above` dying removes it.
    redis.call('HSET', key, '_partial', '1')
    redis.call('HDEL', key, '_u:' .. above.w)
    for i = 1, #chain - 1 do
      chain[i].u.p = 1
      redis.call('HSET', key, '_u:' .. chain[i].w, cjson.encode(chain[i].u))
    end
    return
  end
  local below = cjson.decode(mine)
  for column, value in pairs(below.c) do
    if not hand_up(chain, 'c', column, value) then set_column(key, column, value) end
  end
  local idx = nil
  for column, set in pairs(below.x or {}) do
    if not hand_up(chain, 'x', column, set) then
      idx = idx or index_of(key)
      reindex(key, idx, column, set)
    end
  end
  if idx then save_index(key, idx) end
  above.u.t, above.u.p, above.dirty = below.t, below.p, true
  for _, link in ipairs(chain) do
    if link.dirty then redis.call('HSET', key, '_u:' .. link.w, cjson.encode(link.u)) end
  end
end

-- Undoes the dead `tx`'s write of one record (`short`: its key as the lists hold it).
local function undo_record(key, short, tx, prefix)
  local top = redis.call('HGET', key, '_tx')
  if not top then return end
  local mine = redis.call('HGET', key, '_u:' .. tx)
  if top ~= tx then
    if mine then redis.call('HDEL', key, '_u:' .. tx) end
    fold(key, tx, top, mine)
  elseif not mine then
    drop_record(key)
  else
    local undo = cjson.decode(mine)
    if holds(prefix .. undo.t, short) then
      restore(key, tx, undo)
    else
      drop_record(key)
    end
  end
end

-- Applies `each(record key, short key)` to at most `budget` records of the lifecycle's
-- list `field`; see above. Also returns the length of the list's text as it was read.
local function in_chunks(lifecycle, records, field, budget, each)
  local got = redis.call('HMGET', lifecycle, field, field .. '_at')
  local list = got[1]
  if not list then return 0, true, 0 end
  -- The list is read from where the last call stopped, never decoded or written whole:
  -- its items are record keys, plain strings without quotes or escapes, found as text. A
  -- list of 1,000 is 20 calls of 50, each reading 50 items, not 20 decodes of up to
  -- 1,000 and 19 rewrites of what is left.
  local pos, n = position(list, got[2]), 0
  while true do
    local first, last = string.find(list, '"[^"]*"', pos)
    if not first then break end
    if n == budget then
      redis.call('HSET', lifecycle, field .. '_at', first .. ':' .. #list)
      return n, false, #list
    end
    local short = string.sub(list, first + 1, last - 1)
    -- A list written before the lists were shortened holds whole keys.
    if string.sub(short, 1, #records) == records then short = string.sub(short, #records + 1) end
    each(records .. short, short)
    n, pos = n + 1, last + 1
  end
  -- Done whole: the list has served (it would only keep the lifecycle large).
  redis.call('HDEL', lifecycle, field, field .. '_at')
  return n, true, #list
end

-- `site`: the site's prefix (`opsdb:{site}:`); by default the lifecycle key's part before
-- `tx:{tx}` (abort.lua passes it: its list is in a staging hash, `stg:{tx}`).
local function release_overlay(lifecycle, tx, budget, dead, site)
  site = site or string.sub(lifecycle, 1, #lifecycle - #tx - #'tx:')
  if dead then
    local prefix = site .. 'tx:'
    local used, done = in_chunks(lifecycle, site .. 'rec:', 'records', budget, function(key, short)
      undo_record(key, short, tx, prefix)
    end)
    flush_indexes()
    -- Its undo entries went with the records (restored, folded or removed).
    if done then redis.call('HDEL', lifecycle, 'undo', 'undo_at') end
    return used, done
  end
  local used, done, listed = in_chunks(lifecycle, site .. 'rec:', 'records', budget, function(key)
    if redis.call('HGET', key, '_tx') == tx then drop_record(key) end
  end)
  flush_indexes()
  return used, done, listed
end

local function drop_undo(lifecycle, tx, budget)
  return in_chunks(lifecycle, record_prefix(lifecycle, tx), 'undo', budget, function(key)
    redis.call('HDEL', key, '_u:' .. tx)
  end)
end

