-- Stages one chunk of a large transaction's overlay records (more than one buffer.lua
-- call should write: `STAGE_RECORDS`), so that no call holds Redis for long. The
-- transaction is invisible until commit.lua: it has no stream entry (the forwarder cannot
-- take it) and no lifecycle; readers show each record it staged as it was before it (its
-- undo entry), or not at all if it made the record (`record.rs`); a write over one of its
-- records waits (`busy`, overlay_write.lua); the entries its records leave in index sets
-- stay until the commit. An abandoned staging (the service stopped between chunks) is
-- undone by abort.lua.
--
-- KEYS[1] staging set (transaction id -> start, unix ms), KEYS[2] the transaction's
-- staging hash, KEYS[3] stream, KEYS[4] idempotency record (absent for none)
-- ARGV[1] chunk number (1, 2, ...)     ARGV[2] transaction id
-- ARGV[3] the chunk's overlay records (as buffer.lua's ARGV[9])
-- ARGV[4] now (unix ms)                ARGV[5] max buffered transactions
-- ARGV[6] request fingerprint          ARGV[7] '1' when Redis' memory is at the buffer's
--         limit (then ARGV[3] is '[]' and nothing is written)
--
-- Keys not in KEYS: the record hashes and index sets, inside ARGV[3] (as buffer.lua).
--
-- The staging hash: `next` = the chunk expected next (-1 once abort.lua has started),
-- `at` = the start, and per chunk i `r:i` (the records it wrote, JSON list of short keys
-- as a lifecycle's `records`), `u:i` (those it left an undo entry in, as `undo`), `m:i`
-- (index entries to remove at the commit, JSON list of {index key, id}). `r:i` is
-- written before the records, so an abort finds every record a failed chunk may have
-- written.
--
-- The first chunk makes buffer.lua's checks, before any write; a later chunk checks
-- only that it is the one expected (a chunk after an abort, or after a failed one, writes
-- nothing: the commit will find the staging incomplete).
--
-- Returns {'staged', ''} | {'skip', ''} (not the chunk expected) | the first chunk's
-- {'dup', first response} | {'conflict', ''} | {'full', length} | {'full_memory', ''} |
-- {'busy', ''} (a record's latest writer is another staging; or this transaction is
-- already staged by an earlier, abandoned attempt)
local staging, staged, stream, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local chunk, tx = tonumber(ARGV[1]), ARGV[2]

if chunk == 1 then
  local seen = idempotent(idem, ARGV[6])
  if seen then return seen end
  if ARGV[7] == '1' then return {'full_memory', ''} end
  local length = redis.call('XLEN', stream)
  if length >= tonumber(ARGV[5]) then return {'full', tostring(length)} end
  if redis.call('EXISTS', staged) == 1 then return {'busy', ''} end
elseif tonumber(redis.call('HGET', staged, 'next')) ~= chunk then
  return {'skip', ''}
end

local overlay = cjson.decode(ARGV[3])
if busy(overlay, tx, staging) then return {'busy', ''} end

if chunk == 1 then
  redis.call('ZADD', staging, tonumber(ARGV[4]), tx)
  redis.call('HSET', staged, 'at', ARGV[4])
end
-- The site's prefix `opsdb:{site}:`: the staging key's part before `stg:{tx}`.
local site = string.sub(staged, 1, #staged - #tx - #'stg:')
local records, undone, deferred = {}, {}, {}
for _, rec in ipairs(overlay) do records[#records + 1] = short_key(rec.k, site) end
redis.call('HSET', staged, 'r:' .. chunk, cjson.encode(records))
for i, rec in ipairs(overlay) do
  if write_record(rec, tx, deferred) then undone[#undone + 1] = records[i] end
end
flush_indexes()
if #undone > 0 then redis.call('HSET', staged, 'u:' .. chunk, cjson.encode(undone)) end
if #deferred > 0 then redis.call('HSET', staged, 'm:' .. chunk, cjson.encode(deferred)) end
redis.call('HSET', staged, 'next', chunk + 1)
return {'staged', ''}
