-- Buffers one transaction atomically (a script runs without interleaving, and with
-- `appendfsync always` Redis fsyncs its effects before it replies).
--
-- KEYS[1] stream, KEYS[2] lifecycle hash, KEYS[3] idempotency hash or '' for none
-- ARGV[1] max buffered transactions    ARGV[2] transaction JSON
-- ARGV[3] transaction id               ARGV[4] operation name
-- ARGV[5] request fingerprint          ARGV[6] stored response (JSON)
-- ARGV[7] idempotency TTL (seconds)    ARGV[8] now (unix ms)
-- ARGV[9] overlay: JSON list of {k = record key, id = record id, u = 1 for an update,
--         f = [col, json, ...], i = [index keys]} (`OverlayWrite`, record.rs)
-- ARGV[10] '1' when Redis' memory is at the buffer's limit (buffer/memory.rs): then
--         ARGV[2] is '' and ARGV[9] '[]', and nothing is written
--
-- Keys not in KEYS: the overlay record hashes (`k`) and index sets (`i`) arrive whole,
-- built by `Keys`, inside ARGV[9]; none is derived here.
--
-- Returns {'ok', stream_id} | {'dup', first response} | {'conflict', ''} | {'full', length}
--   | {'full_memory', ''}
--
-- Every check comes before the first write: with Redis over its maxmemory, a script is
-- refused (OOM) at its first write, so a refused one has stored nothing.
local stream, lifecycle, idem = KEYS[1], KEYS[2], KEYS[3]

if idem ~= '' then
  local prev = redis.call('HMGET', idem, 'fp', 'resp')
  if prev[1] then
    if prev[1] == ARGV[5] then
      return {'dup', prev[2]}
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
local records = {}
for _, rec in ipairs(overlay) do
  if redis.call('EXISTS', rec.k) == 0 and rec.u == 1 then
    -- An update of a record whose insert is not buffered (already replicated): the
    -- overlay holds only the changed columns, merged over the replica row on read.
    redis.call('HSET', rec.k, '_partial', '1')
  end
  redis.call('HSET', rec.k, '_tx', ARGV[3], unpack(rec.f))
  if #rec.i > 0 then
    -- Kept with the record so that whoever removes it can remove its index entries.
    redis.call('HSET', rec.k, '_idx', cjson.encode(rec.i))
  end
  for _, index in ipairs(rec.i) do
    -- Score 0: members sort by their text, and a UUIDv7's text sorts by time, so a
    -- page is one ZRANGEBYLEX, whatever the index's size.
    redis.call('ZADD', index, 0, rec.id)
  end
  records[#records + 1] = rec.k
end
redis.call('HSET', lifecycle, 'state', 'buffered', 'stream_id', sid, 'op', ARGV[4],
  'buffered_at', ARGV[8], 'records', cjson.encode(records))
if idem ~= '' then
  redis.call('HSET', idem, 'fp', ARGV[5], 'resp', ARGV[6])
  redis.call('EXPIRE', idem, tonumber(ARGV[7]))
end
return {'ok', sid}
