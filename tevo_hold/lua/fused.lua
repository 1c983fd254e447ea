-- fused.lua: a ledger record and the reference inventory's listing changed in one atomic step,
-- for deployments where both live in one Redis that is not a cluster (their keys lie in two
-- hash slots). Assembled from _prelude.lua, _ledger.lua and _inventory.lua.
--
-- KEYS[1]     the hold's record hash {prefix}:{g:<global_id>}
-- KEYS[2..5]  the listing's stock hash, holds hash, deadlines zset, and the global_id's sale marker
-- ARGV[1]     command, then its arguments:
--   hold    global_id, remote_id, quantity, ttl_ms, retention_ms
--           check the record and the stock, then take the tickets and record the hold 'held'
--   settle  global_id, token, quantity, retention_ms
--           sell the tickets of the invoice that token claimed, and record it 'invoiced'; if the
--           hold lapsed and its tickets are gone, give the record back lapsed (hold_expired)
-- Reply: as _ledger.lua's, {outcome, now_ms, extra, field, value, ...}; for
-- insufficient_quantity, extra is the number of tickets available.
local key, L, cmd, a = KEYS[1], inventory.keys(2), ARGV[1], ARGV

if cmd == 'hold' then
  local gid, rid, qty, ttl, retention = a[2], a[3], tonumber(a[4]), tonumber(a[5]), tonumber(a[6])
  local verdict = ledger.check_hold(key, rid, a[4], '')
  if verdict then return verdict end
  local taken = inventory.take(L, gid, qty, now + ttl)
  if taken == 'insufficient_quantity' then
    return {taken, now, math.max(inventory.available(L), 0)}
  end
  if taken ~= 'ok' then return {taken, now, 0} end
  ledger.write_hold(key, rid, a[4], ttl, 0, '', retention)
  return ledger.reply(key, 'ok')
end

if cmd == 'settle' then
  local gid, tok, qty, retention = a[2], a[3], tonumber(a[4]), tonumber(a[5])
  local rec = redis.call('HMGET', key, 'st', 'ea')
  if rec[1] == 'held' and now >= tonumber(rec[2]) then
    return {'hold_expired', now, 0} -- this settle ran before and gave the claim back lapsed
  end
  local verdict = ledger.check_invoice_owner(key, tok)
  if verdict then return verdict end
  local sold = inventory.sell(L, gid, qty, retention)
  if sold == 'insufficient_quantity' then
    ledger.abort_invoice(key, tok, 'lapsed')
    return {'hold_expired', now, 0}
  end
  if sold ~= 'ok' then
    ledger.abort_invoice(key, tok, 'held')
    return {sold, now, 0}
  end
  return ledger.finish_invoice(key, tok, retention)
end

return redis.error_reply('fused.lua: unknown command ' .. tostring(cmd))
