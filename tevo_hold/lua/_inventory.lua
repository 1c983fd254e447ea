-- _inventory.lua: the reference adapter's stock of one listing, under one hash tag
-- {l:<remote_id>}. Every function takes the listing's keys as a table L:
--   L.stock  hash {prefix}:{l:<remote_id>}: on_hand (unsold tickets, held ones included),
--            held (sum of the live and not yet purged holds), sold
--   L.holds  hash {prefix}:{l:<remote_id>}:holds: global_id -> quantity held
--   L.due    zset {prefix}:{l:<remote_id>}:due: global_id scored by its deadline (ms)
--   L.sale   string {prefix}:{l:<remote_id>}:sold:<global_id>: marks a sale (take, sell)
-- and answers an outcome: 'ok' or an error code (listing_not_found, insufficient_quantity,
-- global_id_conflict, hold_expired), checked before any write.
--
-- Holds lapse exactly at their deadline with no process watching: each function first purges
-- the holds whose deadline has passed, so what is available is computed from live holds only.
-- Each is safe to run twice with the same arguments: holds are keyed by global_id, sales marked.
local inventory = {}

function inventory.keys(first)
  return {stock = KEYS[first], holds = KEYS[first + 1], due = KEYS[first + 2],
          sale = KEYS[first + 3]}
end

function inventory.counts(L)
  local c = redis.call('HMGET', L.stock, 'on_hand', 'held', 'sold')
  return tonumber(c[1]) or 0, tonumber(c[2]) or 0, tonumber(c[3]) or 0
end

function inventory.available(L)
  local on_hand, held = inventory.counts(L)
  return on_hand - held
end

-- Give back the tickets of the holds whose deadline has passed; answers how many.
function inventory.purge(L)
  local lapsed = redis.call('ZRANGEBYSCORE', L.due, '-inf', now)
  if #lapsed == 0 then return 0 end
  local freed = 0
  for _, gid in ipairs(lapsed) do
    freed = freed + (tonumber(redis.call('HGET', L.holds, gid)) or 0)
    redis.call('HDEL', L.holds, gid)
  end
  redis.call('ZREMRANGEBYSCORE', L.due, '-inf', now)
  redis.call('HINCRBY', L.stock, 'held', -freed)
  return freed
end

function inventory.exists(L) return redis.call('EXISTS', L.stock) == 1 end

-- Can gid take qty now? 'ok' (new hold), 'again' (gid already holds them), 'sold' (gid bought
-- them), or an error. Purges lapsed holds first; writes nothing else.
function inventory.check_take(L, gid, qty)
  local c = redis.call('HMGET', L.stock, 'on_hand', 'held')
  if not c[1] then return 'listing_not_found' end -- every listing has on_hand (inventory.set)
  if redis.call('EXISTS', L.sale) == 1 then return 'sold' end
  local held = (tonumber(c[2]) or 0) - inventory.purge(L)
  local mine = tonumber(redis.call('HGET', L.holds, gid))
  if mine then
    if mine ~= qty then return 'global_id_conflict' end
    return 'again'
  end
  if tonumber(c[1]) - held < qty then return 'insufficient_quantity' end
  return 'ok'
end

function inventory.take(L, gid, qty, deadline)
  local verdict = inventory.check_take(L, gid, qty)
  if verdict == 'ok' then
    redis.call('HSET', L.holds, gid, qty)
    redis.call('HINCRBY', L.stock, 'held', qty)
  elseif verdict == 'sold' then
    return 'ok'
  elseif verdict ~= 'again' then
    return verdict
  elseif (tonumber(redis.call('ZSCORE', L.due, gid)) or 0) >= deadline then
    -- gid holds them already, until a later deadline: an attempt that stalled past its lease
    -- lands after the retry that took its claim over (and holds until the ledger's newer
    -- deadline). A deadline only ever moves later, or the hold would lapse here first.
    return 'ok'
  end
  redis.call('ZADD', L.due, deadline, gid)
  return 'ok'
end

function inventory.release(L, gid)
  local mine = tonumber(redis.call('HGET', L.holds, gid))
  if mine then
    redis.call('HDEL', L.holds, gid)
    redis.call('ZREM', L.due, gid)
    redis.call('HINCRBY', L.stock, 'held', -mine)
  end
  inventory.purge(L)
  return 'ok'
end

-- Can gid's qty tickets be sold now? 'ok' and the quantity gid holds on the books (nil if its
-- hold lapsed and was purged), 'again' (sold before), or an error: given the hold's deadline
-- (ms), 'hold_expired' rather than 'insufficient_quantity' when that has passed, the hold is off
-- the books and its tickets gone (it lapsed here before this sale came, and others took them).
-- Writes nothing but the purge of lapsed holds.
function inventory.check_sell(L, gid, qty, deadline)
  if not inventory.exists(L) then return 'listing_not_found' end
  if redis.call('EXISTS', L.sale) == 1 then return 'again' end
  -- a hold still on the books is sold even if its deadline passed a moment ago: an invoice the
  -- ledger accepted never lapses
  local mine = tonumber(redis.call('HGET', L.holds, gid))
  if mine then return 'ok', mine end
  -- the hold lapsed and was purged: take the same quantity again if it is there
  inventory.purge(L)
  if inventory.available(L) < qty then
    if deadline and now >= deadline then return 'hold_expired' end
    return 'insufficient_quantity'
  end
  return 'ok'
end

-- Sell gid's qty tickets, once check_sell said 'ok' (mine: the quantity it said gid holds).
function inventory.sold(L, gid, qty, mine, retention)
  if mine then
    redis.call('HDEL', L.holds, gid)
    redis.call('ZREM', L.due, gid)
    redis.call('HINCRBY', L.stock, 'held', -mine)
  end
  redis.call('HINCRBY', L.stock, 'on_hand', -qty)
  redis.call('HINCRBY', L.stock, 'sold', qty)
  redis.call('SET', L.sale, qty, 'PX', retention)
end

function inventory.sell(L, gid, qty, retention, deadline)
  local verdict, mine = inventory.check_sell(L, gid, qty, deadline)
  if verdict == 'again' then return 'ok' end
  if verdict ~= 'ok' then return verdict end
  inventory.sold(L, gid, qty, mine, retention)
  return 'ok'
end

function inventory.set(L, on_hand)
  redis.call('HSET', L.stock, 'on_hand', on_hand)
  redis.call('HSETNX', L.stock, 'held', 0)
  redis.call('HSETNX', L.stock, 'sold', 0)
  inventory.purge(L)
  return 'ok'
end

function inventory.show(L)
  if not inventory.exists(L) then return 'listing_not_found' end
  inventory.purge(L)
  return 'ok'
end
