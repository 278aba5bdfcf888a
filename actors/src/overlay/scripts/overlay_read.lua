-- Reads overlay records for merged reads, with the transactions being staged
-- (stage.lua), in one atomic step: a record and whether its latest writer is committed
-- are seen at the same moment (`record.rs` shows a staged writer's record as it was
-- before it).
--
-- KEYS[1] staging set, KEYS[2..] record hashes
--
-- Keys not in KEYS: none.
--
-- Returns {staging transaction ids, then each record hash as HGETALL returns it}.
local out = {redis.call('ZRANGE', KEYS[1], 0, -1)}
for i = 2, #KEYS do
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
