-- fused.lua: a ledger record and the reference inventory's listing changed in one atomic step,
-- for deployments where both live in one Redis that is not a cluster (a hold's keys and its
-- listing's lie in two hash slots). Assembled from _prelude.lua, _ledger.lua, _inventory.lua.
--
-- KEYS[1..3]  the hold's record hash, audit trail and shard's due set (see _ledger.lua)
-- KEYS[4..7]  hold and settle only: the listing's stock hash, holds hash, deadlines zset, and
--             the global_id's sale marker (see _inventory.lua)
-- ARGV[1]     command; ARGV[2] global_id; ARGV[3] actor; then the command's arguments:
--   hold     remote_id, quantity, ttl_ms, retention_ms
--            check the record and the stock, then take the tickets and record the hold 'held',
--            with the listing's stock key (KEYS[4]) as the record's field lk
--   settle   token, quantity, retention_ms, retry_ms
--            sell the tickets of the invoice that token claimed, and record it 'invoiced'; if the
--            hold lapsed and its tickets are gone, give the record back lapsed (hold_expired)
--   release  retention_ms, lease_ms, the global_id as keys.py encodes it
--            ledger.release, then give the tickets back to the listing
--   invoice  order key, order JSON, lease_ms, token, retention_ms, the encoded global_id,
--            retry_base_ms, retry_cap_ms
--            ledger.claim_invoice, then settle as above, all at once; a hold held and never
--            invoiced before, whose tickets are on the books, in one step (the same end state)
-- release and invoice are sent with the global_id alone, before anyone knows the listing: they
-- name the listing's keys after the lk of the record (lk, lk:holds, lk:due, lk:sold:<encoded
-- global_id>, as keys.py names them), which is why they, unlike every other script, touch keys
-- not given in KEYS: this script never runs on a cluster, where that would be refused. A record
-- without lk (a hold made step by step) is answered 'unfused' before any write, and the client
-- takes the step-by-step path.
-- Reply: as _ledger.lua's; for insufficient_quantity, extra is the number of tickets available.
local cmd, a = ARGV[1], ARGV
local gid = a[2]
ledger.bind(1, gid, a[3])

-- The listing's keys of a hold whose record names its stock key lk (nil if it names none).
local function listing_of(lk, encoded_gid)
  if not lk then return nil end
  return {stock = lk, holds = lk .. ':holds', due = lk .. ':due',
          sale = lk .. ':sold:' .. encoded_gid}
end

-- The listing's keys of this hold, from the record's lk; nil if it has none.
local function listing(encoded_gid)
  return listing_of(redis.call('HGET', KEYS[1], 'lk'), encoded_gid)
end

-- Sell the tickets of the invoice tok claimed and record it; the buyer has paid, so a failure
-- leaves the invoice due for a retry in retry_ms. But for the first attempt at a hold that has
-- lapsed (lapsed_first: no attempt failed before, and now is past its deadline ea) whose
-- tickets are gone: the hold is given back lapsed (hold_expired). An invoice that failed before
-- was answered as kept and retried, and a live hold's tickets are the buyer's: never dropped,
-- whatever the listing says now.
local function settle(L, tok, qty, retention, retry, lapsed_first)
  local sold = inventory.sell(L, gid, qty, retention)
  if sold == 'insufficient_quantity' and lapsed_first then
    ledger.abort_invoice(tok, 'lapsed', 'hold_expired: the tickets are gone', retention)
    return ledger.fail('hold_expired')
  end
  if sold ~= 'ok' then
    ledger.fail_invoice(tok, sold, retry) -- never dropped: retried
    return ledger.reply(sold) -- with the record: the error names its listing
  end
  return ledger.finish_invoice(tok, retention)
end

if cmd == 'hold' then
  local L = inventory.keys(4)
  local rid, qty, ttl, retention = a[4], tonumber(a[5]), tonumber(a[6]), tonumber(a[7])
  local verdict, _, replacing = ledger.check_hold(rid, a[5], '')
  if verdict then return verdict end
  local taken = inventory.take(L, gid, qty, now + ttl)
  if taken == 'insufficient_quantity' then
    return ledger.fail(taken, math.max(inventory.available(L), 0))
  end
  if taken ~= 'ok' then return ledger.fail(taken) end
  return ledger.write_hold(rid, a[5], ttl, 0, '', retention, '0', KEYS[4], nil, replacing)
end

if cmd == 'settle' then
  local L = inventory.keys(4)
  local tok, qty, retention, retry = a[4], tonumber(a[5]), tonumber(a[6]), tonumber(a[7])
  local rec = redis.call('HMGET', KEYS[1], 'st', 'ea', 'na')
  if rec[1] == 'held' and now >= tonumber(rec[2]) then
    return ledger.fail('hold_expired') -- this settle ran before and gave the claim back lapsed
  end
  local verdict = ledger.check_invoice_owner(tok)
  if verdict then return verdict end
  return settle(L, tok, qty, retention, retry, not rec[3] and now >= tonumber(rec[2]))
end

if cmd == 'release' then
  local L = listing(a[6])
  if not L and redis.call('EXISTS', KEYS[1]) == 1 then return ledger.fail('unfused') end
  local reply = ledger.release(tonumber(a[4]), tonumber(a[5]), '0')
  if L and (reply[1] == 'ok' or reply[1] == 'replay') then
    inventory.release(L, gid) -- a replay asks again, as the step-by-step path asks the POS
  end
  return reply
end

if cmd == 'invoice' then
  local f = redis.call('HMGET', KEYS[1], 'lk', 'st', 'ok', 'na', 'tok', 'qty')
  local L = listing_of(f[1], a[9])
  if not L and f[2] then return ledger.fail('unfused') end -- every record has st
  local tok, retention = a[7], tonumber(a[8])
  -- The common invoice at once: a hold held and never invoiced before, whose tickets are on the
  -- listing's books, is sold and recorded invoiced in one step, which leaves what the claim,
  -- sale and finish below leave, in two thirds of the commands. Any other case takes those
  -- steps (check_sell may have purged lapsed holds first, as the sale below would).
  if L and ledger.fresh_held(f[2], f[3], f[4], f[5]) then
    local qty = tonumber(f[6])
    local verdict, mine = inventory.check_sell(L, gid, qty)
    if verdict == 'ok' and mine then
      inventory.sold(L, gid, qty, mine, retention)
      return ledger.invoice_at_once(a[4], a[5], retention)
    end
  end
  local reply = ledger.claim_invoice(a[4], a[5], tonumber(a[6]), tok)
  if reply[1] ~= 'ok' then return reply end
  local g = redis.call('HMGET', KEYS[1], 'qty', 'na', 'ea')
  local retry = math.floor(math.min(tonumber(a[11]), tonumber(a[10]) * 2 ^ (tonumber(g[2]) or 0)))
  return settle(L, tok, tonumber(g[1]), retention, retry, not g[2] and now >= tonumber(g[3]))
end

return redis.error_reply('fused.lua: unknown command ' .. tostring(cmd))
