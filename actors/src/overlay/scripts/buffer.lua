-- Buffers one transaction atomically (a script runs without interleaving, and with
-- `appendfsync always` Redis fsyncs its effects before it replies). A transaction of more
-- overlay records than one call should write (`STAGE_RECORDS`) goes through stage.lua and
-- commit.lua instead.
--
-- KEYS[1] stream, KEYS[2] lifecycle hash, KEYS[3] staging set (stage.lua),
-- KEYS[4] idempotency record (a string; absent for none: an empty key would be outside
-- the service's ACL key pattern)
-- ARGV[1] max buffered transactions    ARGV[2] the transaction, packed (`body.rs`)
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
-- Undo entries and the shared checks: overlay_write.lua.
--
-- Returns {'ok', stream_id} | {'dup', first response} | {'conflict', ''} | {'full', length}
--   | {'full_memory', ''} | {'busy', ''} (a record's latest writer is still being staged)
--
-- Every check comes before the first write: with Redis over its maxmemory, a script is
-- refused (OOM) at its first write, so a refused one has stored nothing.
local stream, lifecycle, staging, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local seen = idempotent(idem, ARGV[5])
if seen then return seen end

if ARGV[10] == '1' then
  return {'full_memory', ''}
end

local length = redis.call('XLEN', stream)
if length >= tonumber(ARGV[1]) then
  return {'full', tostring(length)}
end

local overlay = cjson.decode(ARGV[9])
if busy(overlay, ARGV[3], staging) then return {'busy', ''} end

local sid = redis.call('XADD', stream, '*', 'tx', ARGV[2])
-- The site's prefix `opsdb:{site}:`: the lifecycle key's part before `tx:{tx}`.
local site = string.sub(lifecycle, 1, #lifecycle - #ARGV[3] - #'tx:')
local records, undone = {}, {}
for _, rec in ipairs(overlay) do
  local short = short_key(rec.k, site)
  if write_record(rec, ARGV[3], nil) then undone[#undone + 1] = short end
  records[#records + 1] = short
end
flush_indexes()
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
