-- Settles part of one applied batch in Redis: forwarded transactions get their commit
-- LSN and join the LSN-scored set; dead ones move to the dead-letter stream with the
-- database's reason and their delivery count; each is acknowledged and leaves the stream
-- in the same step as its outcome (atomic per transaction: a script runs alone).
--
-- KEYS[1] stream, KEYS[2] dead-letter stream, KEYS[3] forwarded sorted set, KEYS[4] the
-- resend window (stream), KEYS[5] its byte count (string)
-- ARGV[1] group, ARGV[2] commit LSN text, ARGV[3] its score, ARGV[4] now (unix ms),
-- ARGV[5] lifecycle key prefix, ARGV[6] most records released per call, ARGV[7] the
-- window (ms; 0 keeps nothing), ARGV[8] its byte bound, ARGV[9] bytes counted per entry
-- besides its body, then per transaction:
--   stream id, transaction id, outcome (applied|skipped|dead), sqlstate, message,
--   compressed body for the window ('' for none)
--
-- Keys not in KEYS: each transaction's lifecycle hash, derived as ARGV[5] .. transaction
-- id; release_overlay's and drop_undo's (overlay_release.lua: record hashes, index sets
-- and previous writers' lifecycles read from Redis).
--
-- A dead transaction will never be replicated: its overlay writes are undone (what reads
-- then show is the previous writer's image if it is still pending, else the replica's
-- row, if any), by release_overlay from overlay_release.lua, BEFORE it is dead-lettered:
-- a release split over calls leaves the transaction pending in the group with the records
-- still to release in its lifecycle, and the next call (or the replay after a crash)
-- continues it. A forwarded one drops its undo entries first (drop_undo), likewise.
--
-- Bounded work per call: the caller sends a bounded number of transactions (each: HSET,
-- ZADD, XACK, XDEL; a dead one also XRANGE, XPENDING, XADD) and at most ARGV[6]
-- record releases happen (about 5 commands each); with the forwarder's 25 and 50
-- (`TXS_PER_CALL`, `RECORDS_PER_CALL`) that is at most about 450 commands.
--
-- The resend window: an applied or skipped transaction's body goes into the window
-- stream (entry id: now) in the same step as its outcome; then the window's oldest entries
-- leave while they are older than the window or the window is over its byte bound, at
-- most (entries added + 8) of them per call: bounded, and it keeps up with what is added.
--
-- Returns the number of transactions settled, from the first: fewer than sent when the
-- record budget ran out (the caller sends the rest again).
local stream, dlq, forwarded, sent, sent_bytes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, lsn, score, now, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local budget = tonumber(ARGV[6])
local window, max_bytes, overhead = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

local added = 0
local function keep(sid, tx, packed)
  if window <= 0 or packed == '' then return end
  redis.call('XADD', sent, '*', 'sid', sid, 'tx', tx, 'z', packed)
  redis.call('INCRBY', sent_bytes, #packed + overhead)
  added = added + 1
end

local function trim()
  local cutoff = tonumber(now) - window
  local bytes = tonumber(redis.call('GET', sent_bytes) or '0')
  for _ = 1, added + 8 do
    local oldest = redis.call('XRANGE', sent, '-', '+', 'COUNT', 1)[1]
    if not oldest then
      if bytes ~= 0 then redis.call('DEL', sent_bytes) end
      return
    end
    local ms = tonumber(string.match(oldest[1], '^(%d+)'))
    if ms >= cutoff and bytes <= max_bytes then return end
    local fields, size = oldest[2], overhead
    for j = 1, #fields, 2 do
      if fields[j] == 'z' then size = size + #fields[j + 1] end
    end
    redis.call('XDEL', sent, oldest[1])
    bytes = bytes - size
    redis.call('DECRBY', sent_bytes, size)
  end
end

local settled = 0
for i = 10, #ARGV, 6 do
  local sid, tx, outcome, sqlstate, message = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local lifecycle = prefix .. tx
  if outcome == 'dead' then
    if budget <= 0 then trim() return settled end
    local used, done = release_overlay(lifecycle, tx, budget, true)
    budget = budget - used
    if not done then trim() return settled end
    local entry = redis.call('XRANGE', stream, sid, sid)
    local pending = redis.call('XPENDING', stream, group, sid, sid, 1)
    local attempts = 1
    if pending[1] then attempts = pending[1][4] end
    local body = ''
    if entry[1] then body = entry[1][2][2] end
    redis.call('XADD', dlq, '*', 'tx', body, 'transaction_id', tx, 'sqlstate', sqlstate,
      'reason', message, 'attempts', attempts, 'stream_id', sid, 'dead_at', now)
    -- No expiry: the lifecycle stays as long as its dead letter may be retried; dropping
    -- the dead letter starts its retention (dlq_drop.lua).
    redis.call('HSET', lifecycle, 'state', 'dead', 'dead_at', now, 'reason', message,
      'sqlstate', sqlstate, 'attempts', attempts)
  else
    -- Committed: it can no longer die, so its undo entries have served.
    local used, done = drop_undo(lifecycle, tx, budget)
    budget = budget - used
    if not done then trim() return settled end
    redis.call('HSET', lifecycle, 'state', 'forwarded', 'forwarded_at', now, 'commit_lsn', lsn)
    redis.call('ZADD', forwarded, score, tx)
    keep(sid, tx, ARGV[i + 5])
  end
  redis.call('XACK', stream, group, sid)
  redis.call('XDEL', stream, sid)
  settled = settled + 1
end
trim()
return settled
