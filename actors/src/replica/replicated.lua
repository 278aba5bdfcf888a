-- Marks every forwarded transaction whose commit LSN the replica has replayed as
-- `replicated`, starts its lifecycle's retention, and removes the overlay records whose
-- latest writer it was (the replica now answers for them), with their index entries.
--
-- KEYS[1] forwarded sorted set
-- ARGV[1] replay LSN score (rounded down), ARGV[2] now (unix ms), ARGV[3] lifecycle key
-- prefix, ARGV[4] retention (seconds), ARGV[5] most transactions per call
--
-- Returns the number of transactions marked.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[5]))
for _, tx in ipairs(due) do
  local lifecycle = ARGV[3] .. tx
  local records = redis.call('HGET', lifecycle, 'records')
  if records then
    for _, key in ipairs(cjson.decode(records)) do
      if redis.call('HGET', key, '_tx') == tx then
        local indexes = redis.call('HGET', key, '_idx')
        if indexes then
          local id = string.match(key, '[^:]+$')
          for _, index in ipairs(cjson.decode(indexes)) do
            redis.call('SREM', index, id)
          end
        end
        redis.call('DEL', key)
      end
    end
  end
  redis.call('HSET', lifecycle, 'state', 'replicated', 'replicated_at', ARGV[2])
  redis.call('EXPIRE', lifecycle, tonumber(ARGV[4]))
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
