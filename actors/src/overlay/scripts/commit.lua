-- Commits a transaction staged by stage.lua: in one step it becomes what buffer.lua
-- makes of a write in one call (stream entry, lifecycle, idempotency record), the index
-- entries its records left are removed, and its staging ends. Bounded: a few commands,
-- plus per index entry left (`m:i`) one HGET of its record's `_idx` (a record moved back
-- keeps its entry), one ZREM per index set, and the lists joined as text.
--
-- KEYS[1] staging set, KEYS[2] the transaction's staging hash, KEYS[3] stream,
-- KEYS[4] lifecycle hash, KEYS[5] idempotency record (absent for none)
-- ARGV[1] number of chunks staged      ARGV[2] the transaction, packed (`body.rs`)
-- ARGV[3] transaction id               ARGV[4] operation name
-- ARGV[5] request fingerprint          ARGV[6] stored response (JSON)
-- ARGV[7] idempotency TTL (seconds)    ARGV[8] now (unix ms)
-- ARGV[9] the steps for the lifecycle (as buffer.lua's ARGV[11]; '' for none)
--
-- Keys not in KEYS: the index sets named in the staging hash's `m:i` lists.
--
-- Returns {'ok', stream_id} | {'incomplete', ''} (a chunk is missing, or the staging was
-- aborted: nothing is committed, the caller aborts what is left) | {'dup', first
-- response} | {'conflict', ''} (the key was used meanwhile: the caller aborts the staging)
local staging, staged, stream, lifecycle, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local chunks, tx = tonumber(ARGV[1]), ARGV[3]

if tonumber(redis.call('HGET', staged, 'next')) ~= chunks + 1 then
  return {'incomplete', ''}
end
local seen = idempotent(idem, ARGV[5])
if seen then return seen end

local sid = redis.call('XADD', stream, '*', 'tx', ARGV[2])
-- Each chunk's list is a JSON list of strings: joined as text, not decoded.
local function joined(prefix)
  local parts = {}
  for i = 1, chunks do
    local list = redis.call('HGET', staged, prefix .. i)
    if list and #list > 2 then parts[#parts + 1] = string.sub(list, 2, -2) end
  end
  if #parts == 0 then return nil end
  return '[' .. table.concat(parts, ',') .. ']'
end
for i = 1, chunks do
  local moved = redis.call('HGET', staged, 'm:' .. i)
  if moved then
    for _, entry in ipairs(cjson.decode(moved)) do
      -- A later step (or chunk) of the same transaction may have moved it back.
      if not in_index(entry[1], entry[2]) then index_remove(entry[1], entry[2]) end
    end
  end
end
flush_indexes()
redis.call('HSET', lifecycle, 'state', 'buffered', 'op', ARGV[4],
  'buffered_at', ARGV[8], 'records', joined('r:') or '[]')
local undone = joined('u:')
if undone then redis.call('HSET', lifecycle, 'undo', undone) end
if ARGV[9] ~= '' then redis.call('HSET', lifecycle, 'steps', ARGV[9]) end
redis.call('DEL', staged)
redis.call('ZREM', staging, tx)
if idem then
  redis.call('SET', idem, ARGV[5] .. ARGV[6], 'EX', tonumber(ARGV[7]))
end
return {'ok', sid}
