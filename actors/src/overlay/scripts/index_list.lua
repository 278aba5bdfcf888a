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

-- An index key of the record `record_key` by its short name (a whole key as it is).
-- Undo entries keep their index keys (`x`) short too; `false` (no entry) stays `false`.
local function whole_index(record_key, name)
  if not name or string.find(name, ':idx:', 1, true) then return name end
  return (index_prefix(record_key) or '') .. name
end

-- An index key of the record `record_key` as its short name (a key of another shape as
-- it is).
local function short_index(record_key, key)
  local prefix = index_prefix(record_key)
  if key and prefix and string.sub(key, 1, #prefix) == prefix then
    return string.sub(key, #prefix + 1)
  end
  return key
end

-- `_idx`'s text (or nil) as a table column -> index key; a key's column is its last but
-- one `:`-separated part.
local function decode_idx(record_key, text)
  local idx = {}
  if not text then return idx end
  for _, name in ipairs(cjson.decode(text)) do
    local key = whole_index(record_key, name)
    idx[string.match(key, ':([^:]+):[^:]*$') or key] = key
  end
  return idx
end

-- A table column -> index key as `_idx`'s text, or false if it holds none.
local function encode_idx(record_key, idx)
  local list = {}
  for _, key in pairs(idx) do list[#list + 1] = short_index(record_key, key) end
  if #list == 0 then return false end
  return cjson.encode(list)
end

-- Whether the record `id`'s `_idx` names the index set `set` (its key: a staging's
-- deferred removals, `m:i` in stage.lua, name sets and ids, not records): a removal
-- deferred when the record left the set is not made if it is in the set again.
local function in_index(set, id)
  local site, tbl, column = string.match(set, '^(.*:)idx:([^:]+):([^:]+):[^:]*$')
  if not site then return false end
  local key = site .. 'rec:' .. tbl .. ':' .. id
  return decode_idx(key, redis.call('HGET', key, '_idx'))[column] == set
end

-- The index entries a call adds and removes, sent to Redis at its end as one ZADD and
-- one ZREM per index set (`flush_indexes`) instead of one command per record: the AOF
-- then gets each set's key once per call, not once per record (a bulk's records share
-- their sets). Every member's score is 0, so an entry's last move in the call is its net
-- effect, whatever the set held before: a later move of the same member overrides an
-- earlier one. Nothing in a writing script reads an index set, so deferring the moves to
-- the end changes no decision in it.
local index_moves, index_sets = {}, {}

local function index_move(set, id, present)
  local moves = index_moves[set]
  if not moves then
    moves = {}
    index_moves[set] = moves
    index_sets[#index_sets + 1] = set
  end
  moves[id] = present
end

local function index_add(set, id) index_move(set, id, true) end
local function index_remove(set, id) index_move(set, id, false) end

-- At most this many members per command (Lua's `unpack` has a limit).
local INDEX_SLICE = 500

local function send_members(command, set, members)
  for first = 1, #members, INDEX_SLICE do
    local args = {}
    for j = first, math.min(first + INDEX_SLICE - 1, #members) do
      if command == 'ZADD' then args[#args + 1] = 0 end
      args[#args + 1] = members[j]
    end
    redis.call(command, set, unpack(args))
  end
end

-- Sends the moves gathered since the last flush; every script that moves an entry calls
-- it before it returns.
local function flush_indexes()
  for _, set in ipairs(index_sets) do
    local added, removed = {}, {}
    for id, present in pairs(index_moves[set]) do
      if present then added[#added + 1] = id else removed[#removed + 1] = id end
    end
    -- Sorted: the AOF gets the same bytes for the same moves.
    table.sort(removed)
    table.sort(added)
    send_members('ZREM', set, removed)
    send_members('ZADD', set, added)
  end
  index_moves, index_sets = {}, {}
end
