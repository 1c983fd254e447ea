-- fused.lua: a ledger record and the reference inventory's listing changed in one atomic step,
-- for deployments where both live in one Redis that is not a cluster (a hold's keys and its
-- listing's lie in two hash slots). Assembled from _prelude.lua, _ledger.lua, _inventory.lua.
--
-- KEYS[1..3]  the hold's record hash, audit stream and shard's due set (see _ledger.lua)
-- KEYS[4..7]  the listing's stock hash, holds hash, deadlines zset, the global_id's sale marker
-- ARGV[1]     command; ARGV[2] global_id; ARGV[3] actor; then the command's arguments:
--   hold    remote_id, quantity, ttl_ms, retention_ms
--           check the record and the stock, then take the tickets and record the hold 'held'
--   settle  token, quantity, retention_ms, retry_ms
--           sell the tickets of the invoice that token claimed, and record it 'invoiced'; if the
--           hold lapsed and its tickets are gone, give the record back lapsed (hold_expired)
-- Reply: as _ledger.lua's; for insufficient_quantity, extra is the number of tickets available.
local L, cmd, a = inventory.keys(4), ARGV[1], ARGV
local gid = a[2]
ledger.bind(1, gid, a[3])

if cmd == 'hold' then
  local rid, qty, ttl, retention = a[4], tonumber(a[5]), tonumber(a[6]), tonumber(a[7])
  local verdict = ledger.check_hold(rid, a[5], '')
  if verdict then return verdict end
  local taken = inventory.take(L, gid, qty, now + ttl)
  if taken == 'insufficient_quantity' then
    return {taken, now, math.max(inventory.available(L), 0), {}}
  end
  if taken ~= 'ok' then return {taken, now, 0, {}} end
  ledger.write_hold(rid, a[5], ttl, 0, '', retention, '0')
  return ledger.reply('ok')
end

if cmd == 'settle' then
  local tok, qty, retention, retry = a[4], tonumber(a[5]), tonumber(a[6]), tonumber(a[7])
  local rec = redis.call('HMGET', KEYS[1], 'st', 'ea')
  if rec[1] == 'held' and now >= tonumber(rec[2]) then
    return {'hold_expired', now, 0, {}} -- this settle ran before and gave the claim back lapsed
  end
  local verdict = ledger.check_invoice_owner(tok)
  if verdict then return verdict end
  local sold = inventory.sell(L, gid, qty, retention)
  if sold == 'insufficient_quantity' then
    ledger.abort_invoice(tok, 'lapsed', 'hold_expired: the tickets are gone')
    return {'hold_expired', now, 0, {}}
  end
  if sold ~= 'ok' then
    ledger.fail_invoice(tok, sold, retry) -- the buyer has paid: never dropped, retried
    return {sold, now, 0, {}}
  end
  return ledger.finish_invoice(tok, retention)
end

return redis.error_reply('fused.lua: unknown command ' .. tostring(cmd))
