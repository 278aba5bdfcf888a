-- Creates the forwarder's consumer group (and the stream, if there is none yet), unless it
-- exists. A script only to carry the `allow-oom` flag: `XGROUP CREATE` alone is refused
-- while Redis is over its `maxmemory`, and then nothing could drain the buffer.
--
-- KEYS[1] stream
-- ARGV[1] group
--
-- Keys not in KEYS: none.
--
-- Bounded: the group list of one stream (one group in practice).
--
-- Returns 1 if the group was created, 0 if it existed.
local stream, group = KEYS[1], ARGV[1]
if redis.call('EXISTS', stream) == 1 then
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    -- RESP2 reply: a flat list of field, value pairs per group.
    for i = 1, #g, 2 do
      if g[i] == 'name' and g[i + 1] == group then return 0 end
    end
  end
end
redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
return 1
