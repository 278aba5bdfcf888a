-- A record's `_idx`, shared by the scripts that write or release overlay records (see
-- `scripts/mod.rs`): the index sets holding the record's id, one per indexed column with
-- a value, kept as a JSON list of short names `{column}:{value}`, each its index key
-- without the prefix it shares with the record's key (`opsdb:{site}:idx:{table}:`, see
-- `Keys::index`): the record's key gives that back. A list written by an older build holds
-- whole keys, which are read as they are (a whole key holds `:idx:`; a short name, one
-- `:` only, since index values hold none).

-- The index prefix of a record key `opsdb:{site}:rec:{table}:{id}`; nil for a key of
-- another shape (its list then holds whole keys).
local function index_prefix(record_key)
  local site, tbl = string.match(record_key, '^(.*:)rec:([^:]+):[^:]*$')
  if not site then return nil end
  return site .. 'idx:' .. tbl .. ':'
end

-- `_idx`'s text (or nil) as a table column -> index key; a key's column is its last but
-- one `:`-separated part.
local function decode_idx(record_key, text)
  local idx = {}
  if not text then return idx end
  local prefix = index_prefix(record_key) or ''
  for _, name in ipairs(cjson.decode(text)) do
    local key = name
    if not string.find(name, ':idx:', 1, true) then key = prefix .. name end
    idx[string.match(key, ':([^:]+):[^:]*$') or key] = key
  end
  return idx
end

-- A table column -> index key as `_idx`'s text, or false if it holds none.
local function encode_idx(record_key, idx)
  local prefix = index_prefix(record_key)
  local list = {}
  for _, key in pairs(idx) do
    if prefix and string.sub(key, 1, #prefix) == prefix then
      key = string.sub(key, #prefix + 1)
    end
    list[#list + 1] = key
  end
  if #list == 0 then return false end
  return cjson.encode(list)
end
