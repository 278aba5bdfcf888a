-- Buffers one transaction atomically (a script runs without interleaving, and with
-- `appendfsync always` Redis fsyncs its effects before it replies).
--
-- KEYS[1] stream, KEYS[2] lifecycle hash, KEYS[3] idempotency record (a string; absent
-- for none: an empty key would be outside the service's ACL key pattern)
-- ARGV[1] max buffered transactions    ARGV[2] transaction JSON
-- ARGV[3] transaction id               ARGV[4] operation name
-- ARGV[5] request fingerprint (hex, fixed length)  ARGV[6] stored response (JSON)
-- ARGV[7] idempotency TTL (seconds)    ARGV[8] now (unix ms)
-- ARGV[9] overlay: JSON list of {k = record key, id = record id, u = 1 for an update,
--         f = [col, json, ...], i = [[indexed col, index key or '' for null], ...]}
--         (`OverlayWrite`, record.rs)
-- ARGV[10] '1' when Redis' memory is at the buffer's limit (buffer/memory.rs): then
--         ARGV[2] is '' and ARGV[9] '[]', and nothing is written
-- ARGV[11] POST /transactions: the steps (JSON list of {step_id, op, table, id | rows})
--         kept in the lifecycle as `steps`; '' for the fixed endpoints
--
-- Keys not in KEYS: the overlay record hashes (`k`) and index sets (`i`) arrive whole,
-- built by `Keys`, inside ARGV[9]; none is derived here.
--
-- Undo entries: a write over an image the overlay already holds (an update of a record
-- whose insert, or earlier update, is still buffered or forwarded) keeps in the record the
-- field `_u:{tx}` = {t = previous writer, p = 1 if the image was partial, c = {column =
-- previous JSON text, or false if absent} for the columns it writes, x = {column =
-- previous index key, or false} for the index entries it moves}, and lists the record in
-- its lifecycle's `undo`. settle.lua drops them once the transaction is forwarded (it can
-- no longer die), or restores them if it dies (overlay_release.lua). A write that creates
-- the record needs none: undoing it is removing the record.
--
-- Returns {'ok', stream_id} | {'dup', first response} | {'conflict', ''} | {'full', length}
--   | {'full_memory', ''}
--
-- Every check comes before the first write: with Redis over its maxmemory, a script is
-- refused (OOM) at its first write, so a refused one has stored nothing.
local stream, lifecycle, idem = KEYS[1], KEYS[2], KEYS[3]

-- Moves the record's index entries to the values `rec` writes, noting in `undo` (if any)
-- where each moved entry was. `_idx` lists the index keys holding its id, one per indexed
-- column; a key's column is its last but one `:`-separated part (see `Keys::index`).
-- Returns the record's new `_idx` (JSON), false if it has none left, nil if `rec` indexes
-- nothing: the caller writes it with the record's columns, in one HSET.
local function move_indexes(rec, idx_text, undo)
  if #rec.i == 0 then return nil end
  local idx = {}
  if idx_text then
    for _, key in ipairs(cjson.decode(idx_text)) do
      idx[string.match(key, ':([^:]+):[^:]*$') or key] = key
    end
  end
  for _, pair in ipairs(rec.i) do
    local column, set = pair[1], pair[2]
    local old = idx[column]
    if set == '' then set = nil end
    if old ~= set then
      -- Score 0: members sort by their text, and a UUIDv7's text sorts by time, so a
      -- page is one ZRANGEBYLEX, whatever the index's size.
      if old then redis.call('ZREM', old, rec.id) end
      if set then redis.call('ZADD', set, 0, rec.id) end
      idx[column] = set
      if undo and undo.x[column] == nil then undo.x[column] = old or false end
    end
  end
  local list = {}
  for _, key in pairs(idx) do list[#list + 1] = key end
  if #list == 0 then return false end
  -- Kept with the record so that whoever moves or removes it can find its entries.
  return cjson.encode(list)
end

-- Writes one record's image, its index entries and, over an image the overlay held, its
-- undo entry. Returns true if it left a new undo entry.
local function write_record(rec, tx)
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
  local idx = move_indexes(rec, prev[3], undo)
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

-- The idempotency record: one string, the fingerprint (ARGV[5], fixed length) followed by
-- the first answer. One of the older layout is a hash {fp = the whole SHA-256 in hex,
-- resp}, whose first characters are today's fingerprint; it is read as it is.
if idem then
  local fp, resp = nil, nil
  local stored = redis.pcall('GET', idem)
  if type(stored) == 'table' and stored.err then
    local prev = redis.call('HMGET', idem, 'fp', 'resp')
    if prev[1] then fp, resp = string.sub(prev[1], 1, #ARGV[5]), prev[2] end
  elseif stored then
    fp, resp = string.sub(stored, 1, #ARGV[5]), string.sub(stored, #ARGV[5] + 1)
  end
  if fp then
    if fp == ARGV[5] then
      return {'dup', resp}
    end
    return {'conflict', ''}
  end
end

if ARGV[10] == '1' then
  return {'full_memory', ''}
end

local length = redis.call('XLEN', stream)
if length >= tonumber(ARGV[1]) then
  return {'full', tostring(length)}
end

local sid = redis.call('XADD', stream, '*', 'tx', ARGV[2])
local overlay = cjson.decode(ARGV[9])
-- The lifecycle lists its records as `{table}:{id}`, their keys without the site's record
-- prefix (`opsdb:{site}:rec:`, the lifecycle key's site prefix + `rec:`): a list of one
-- stays under Redis' `hash-max-listpack-value` (64), so the lifecycle stays a listpack.
local skip = #lifecycle - #ARGV[3] - #'tx:' + #'rec:'
local records, undone = {}, {}
for _, rec in ipairs(overlay) do
  local short = string.sub(rec.k, skip + 1)
  if write_record(rec, ARGV[3]) then undone[#undone + 1] = short end
  records[#records + 1] = short
end
redis.call('HSET', lifecycle, 'state', 'buffered', 'op', ARGV[4],
  'buffered_at', ARGV[8], 'records', cjson.encode(records))
if #undone > 0 then
  redis.call('HSET', lifecycle, 'undo', cjson.encode(undone))
end
if ARGV[11] and ARGV[11] ~= '' then
  redis.call('HSET', lifecycle, 'steps', ARGV[11])
end
if idem then
  redis.call('SET', idem, ARGV[5] .. ARGV[6], 'EX', tonumber(ARGV[7]))
end
return {'ok', sid}
