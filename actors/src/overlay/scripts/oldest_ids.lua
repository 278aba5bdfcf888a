-- The ids of the oldest entries of the buffer's stream and of the resend window, without
-- their bodies: `XRANGE … COUNT 1` runs here, in Redis, and only the ids cross the socket
-- (the oldest entry is often a bulk registration of a megabyte). Read-only.
--
-- KEYS[1] stream, KEYS[2] resend window stream (`sent`)
--
-- Keys not in KEYS: none.
--
-- Returns {stream's oldest id or false, window's oldest id or false}.
local function oldest(key)
  local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)[1]
  if first then return first[1] end
  return false
end
return {oldest(KEYS[1]), oldest(KEYS[2])}
