-- Shared by buffer.lua (a write in one call) and stage.lua / commit.lua (a large write in
-- chunks), prepended to each at compile time (see `scripts/mod.rs`): writing overlay
-- records, and the checks every write makes before its first write.
--
-- Undo entries: a write over an image the overlay already holds (an update of a record
-- whose insert, or earlier update, is still buffered or forwarded) keeps in the record the
-- field `_u:{tx}` = {t = previous writer, p = 1 if the image was partial, c = {column =
-- previous JSON text, or false if absent} for the columns it writes, x = {column =
-- previous index set as `_idx` names it (short, index_list.lua; a whole key from an older
-- build), or false} for the indexed columns it writes}, and lists the record in
-- its lifecycle's `undo`. settle.lua drops them once the transaction is forwarded (it can
-- no longer die), or restores them if it dies (overlay_release.lua). A write that creates
-- the record needs none: undoing it is removing the record. Readers use the same entry
-- to show a record as it was before a writer still being staged (`record.rs`).

-- Moves the record's index entries to the values `rec` writes, noting in `undo` (if any)
-- where the entry of each indexed column it writes was, moved or not. `_idx` lists the
-- index sets holding its id, one per indexed column (index_list.lua). The moves are
-- gathered; the calling script sends them, one ZADD and one ZREM per index set, before it
-- returns (`flush_indexes`).
-- `deferred` (a staged write, stage.lua): the entries it leaves are not removed but listed
-- there as {index key, id}, for commit.lua to remove, so that until the commit a list by
-- the old value still finds the record (readers show it as it was before the write).
-- Returns the record's new `_idx` (JSON), false if it has none left, nil if `rec` indexes
-- nothing: the caller writes it with the record's columns, in one HSET.
local function move_indexes(rec, idx_text, undo, deferred)
  if #rec.i == 0 then return nil end
  local idx = decode_idx(rec.k, idx_text)
  for _, pair in ipairs(rec.i) do
    local column, set = pair[1], pair[2]
    local old = idx[column]
    if set == '' then set = nil end
    if old ~= set then
      -- Score 0: members sort by their text, and a UUIDv7's text sorts by time, so a
      -- page is one ZRANGEBYLEX, whatever the index's size.
      if old then
        if deferred then
          deferred[#deferred + 1] = {old, rec.id}
        else
          index_remove(old, rec.id)
        end
      end
      if set then index_add(set, rec.id) end
      idx[column] = set
    end
    -- Noted even when the entry stays (the column written with the value it held): if
    -- the write below this one dies, its entry is handed up to this one's (a fold,
    -- overlay_release.lua), not put back in the record under this write's value.
    if undo and undo.x[column] == nil then undo.x[column] = short_index(rec.k, old) or false end
  end
  -- Kept with the record so that whoever moves or removes it can find its entries.
  return encode_idx(rec.k, idx)
end

-- Writes one record's image, its index entries and, over an image the overlay held, its
-- undo entry. Returns true if it left a new undo entry.
local function write_record(rec, tx, deferred)
  local prev = redis.call('HMGET', rec.k, '_tx', '_partial', '_idx')
  local undo = nil
  if prev[1] == tx then
    -- An earlier step of the same transaction wrote it: extend that step's entry.
    local kept = redis.call('HGET', rec.k, '_u:' .. tx)
    if kept then undo = cjson.decode(kept) end
  elseif prev[1] then
    undo = {t = prev[1], c = {}, x = {}}
    if prev[2] then undo.p = 1 end
  elseif rec.u == 1 then
    -- An update of a record whose insert is not buffered (already replicated): the
    -- overlay holds only the changed columns, merged over the replica row on read.
    redis.call('HSET', rec.k, '_partial', '1')
  end
  if undo then
    undo.c, undo.x = undo.c or {}, undo.x or {}
    local names = {}
    for j = 1, #rec.f, 2 do names[#names + 1] = rec.f[j] end
    local old = redis.call('HMGET', rec.k, unpack(names))
    for j, name in ipairs(names) do
      if undo.c[name] == nil then undo.c[name] = old[j] or false end
    end
  end
  -- One HSET for the image and its index list: the AOF gets the record's key once.
  local idx = move_indexes(rec, prev[3], undo, deferred)
  if idx then
    redis.call('HSET', rec.k, '_tx', tx, '_idx', idx, unpack(rec.f))
  else
    redis.call('HSET', rec.k, '_tx', tx, unpack(rec.f))
    if idx == false and prev[3] then redis.call('HDEL', rec.k, '_idx') end
  end
  if not undo then return false end
  if next(undo.x) == nil then undo.x = nil end
  redis.call('HSET', rec.k, '_u:' .. tx, cjson.encode(undo))
  return prev[1] ~= tx
end

-- Whether one of `records` has as its latest writer another transaction still being
-- staged (a member of the staging set): writing over an image that may yet be withdrawn
-- would build on it, so such a write waits for that one's commit or abort. (With nothing
-- staged, as almost always, the check is one `ZRANGE`: single writes pay no read per
-- record.)
local function busy(records, tx, staging)
  -- Usually nothing is being staged: one read then, not one per record.
  if #redis.call('ZRANGE', staging, 0, 0) == 0 then return false end
  for _, rec in ipairs(records) do
    local writer = redis.call('HGET', rec.k, '_tx')
    if writer and writer ~= tx and redis.call('ZSCORE', staging, writer) then
      return true
    end
  end
  return false
end

-- The idempotency record: one string, the fingerprint (`fp`, fixed length) followed by
-- the first answer. One of the older layout is a hash {fp = the whole SHA-256 in hex,
-- resp}, whose first characters are today's fingerprint; it is read as it is. Returns
-- the script's answer for a key already used ({'dup', first answer} or {'conflict', ''}),
-- or nil for a new one.
local function idempotent(idem, fp)
  if not idem then return nil end
  local stored_fp, resp = nil, nil
  local stored = redis.pcall('GET', idem)
  if type(stored) == 'table' and stored.err then
    local prev = redis.call('HMGET', idem, 'fp', 'resp')
    if prev[1] then stored_fp, resp = string.sub(prev[1], 1, #fp), prev[2] end
  elseif stored then
    stored_fp, resp = string.sub(stored, 1, #fp), string.sub(stored, #fp + 1)
  end
  if not stored_fp then return nil end
  if stored_fp == fp then return {'dup', resp} end
  return {'conflict', ''}
end

-- A record key as the lifecycle lists hold it: `{table}:{id}`, without the site's record
-- prefix (`opsdb:{site}:rec:`; `site` is `opsdb:{site}:`), so a list of one stays under
-- Redis' `hash-max-listpack-value` (64) and the lifecycle stays a listpack.
local function short_key(key, site)
  return string.sub(key, #site + #'rec:' + 1)
end
