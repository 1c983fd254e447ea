-- inventory.lua: the reference adapter's stock of one listing. One script, one command per call
-- (ARGV[1]); every key belongs to one listing (hash tag {l:<remote_id>}), so on a Redis Cluster
-- the script runs in one slot.
--
-- KEYS[1]  stock hash {prefix}:{l:<remote_id>}: on_hand (unsold tickets, held ones included),
--          held (sum of the live and not yet purged holds), sold
-- KEYS[2]  holds hash {prefix}:{l:<remote_id>}:holds: global_id -> quantity held
-- KEYS[3]  deadlines zset {prefix}:{l:<remote_id>}:due: global_id scored by its deadline (ms)
-- KEYS[4]  sale marker {prefix}:{l:<remote_id>}:sold:<global_id> (take and sell only)
--
-- ARGV[1]  command, one of:
--   take     ARGV[2] global_id, ARGV[3] quantity, ARGV[4] deadline (ms since the epoch)
--   release  ARGV[2] global_id
--   sell     ARGV[2] global_id, ARGV[3] quantity, ARGV[4] retention_ms
--   set      ARGV[2] on_hand
--   show     (no more arguments)
--
-- Reply: {outcome, on_hand, held, sold}, outcome 'ok' or an error code
-- (listing_not_found, insufficient_quantity, global_id_conflict).
--
-- Holds lapse exactly at their deadline with no process watching: every command first purges
-- the holds whose deadline has passed, so what is available is always computed from live holds.
-- Every command is safe to run twice with the same arguments: a hold is keyed by its global_id
-- and a sale leaves a marker.

local stock, holds, due = KEYS[1], KEYS[2], KEYS[3]
local cmd = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function counts(outcome)
  local c = redis.call('HMGET', stock, 'on_hand', 'held', 'sold')
  return {outcome, tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0}
end

local function purge()
  local lapsed = redis.call('ZRANGEBYSCORE', due, '-inf', now)
  if #lapsed == 0 then return end
  local freed = 0
  for _, gid in ipairs(lapsed) do
    freed = freed + (tonumber(redis.call('HGET', holds, gid)) or 0)
    redis.call('HDEL', holds, gid)
  end
  redis.call('ZREMRANGEBYSCORE', due, '-inf', now)
  redis.call('HINCRBY', stock, 'held', -freed)
end

local function available()
  local c = redis.call('HMGET', stock, 'on_hand', 'held')
  return (tonumber(c[1]) or 0) - (tonumber(c[2]) or 0)
end

if cmd == 'set' then
  redis.call('HSET', stock, 'on_hand', ARGV[2])
  redis.call('HSETNX', stock, 'held', 0)
  redis.call('HSETNX', stock, 'sold', 0)
  purge()
  return counts('ok')
end

if redis.call('EXISTS', stock) == 0 then return {'listing_not_found', 0, 0, 0} end

if cmd == 'show' then
  purge()
  return counts('ok')
end

if cmd == 'take' then
  local gid, qty, deadline = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  if redis.call('EXISTS', KEYS[4]) == 1 then return counts('ok') end
  purge()
  local mine = tonumber(redis.call('HGET', holds, gid))
  if mine then
    if mine ~= qty then return counts('global_id_conflict') end
    redis.call('ZADD', due, deadline, gid)
    return counts('ok')
  end
  if available() < qty then return counts('insufficient_quantity') end
  redis.call('HSET', holds, gid, qty)
  redis.call('ZADD', due, deadline, gid)
  redis.call('HINCRBY', stock, 'held', qty)
  return counts('ok')
end

if cmd == 'release' then
  local gid = ARGV[2]
  local mine = tonumber(redis.call('HGET', holds, gid))
  if mine then
    redis.call('HDEL', holds, gid)
    redis.call('ZREM', due, gid)
    redis.call('HINCRBY', stock, 'held', -mine)
  end
  purge()
  return counts('ok')
end

if cmd == 'sell' then
  local gid, qty, retention = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  if redis.call('EXISTS', KEYS[4]) == 1 then return counts('ok') end
  -- a hold still on the books is sold even if its deadline passed a moment ago: an invoice
  -- the ledger accepted never lapses
  local mine = tonumber(redis.call('HGET', holds, gid))
  if mine then
    redis.call('HDEL', holds, gid)
    redis.call('ZREM', due, gid)
    redis.call('HINCRBY', stock, 'held', -mine)
  else
    -- the hold lapsed and was purged: take the same quantity again if it is there
    purge()
    if available() < qty then return counts('insufficient_quantity') end
  end
  redis.call('HINCRBY', stock, 'on_hand', -qty)
  redis.call('HINCRBY', stock, 'sold', qty)
  redis.call('SET', KEYS[4], qty, 'PX', retention)
  return counts('ok')
end

return redis.error_reply('inventory.lua: unknown command ' .. tostring(cmd))
