-- Publishes events: each gets the next site-wide sequence number, is appended to the
-- capped event stream under the id `<seq>-0` (for clients resuming with `since`), and is
-- published on the site's channel, in that order and atomically, so the stream's order,
-- the channel's order and the sequence agree.
--
-- KEYS[1] sequence counter, KEYS[2] event stream
-- ARGV[1] channel, ARGV[2] stream cap (approximate MAXLEN), then one event per argument:
-- a JSON object without `seq` (never empty: it has at least `type` and `at`)
--
-- Keys not in KEYS: none (the channel is not a key).
--
-- Bounded: the caller sends at most a hundred events per call (INCR, XADD, PUBLISH each).
--
-- Returns the last sequence number given.
local seq = 0
for i = 3, #ARGV do
  seq = redis.call('INCR', KEYS[1])
  local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[i], 2)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'e', event)
  redis.call('PUBLISH', ARGV[1], event)
end
return seq
