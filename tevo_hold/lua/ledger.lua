-- ledger.lua: one ledger command per call. Assembled from _prelude.lua and _ledger.lua.
--
-- KEYS[1]  the hold's record hash {prefix}:{g:<global_id>} (the only key: one slot)
-- ARGV[1]  command, then its arguments:
--   claim_hold     remote_id, quantity, ttl_ms, lease_ms, token, retention_ms
--   finish_hold    token, retention_ms
--   abort_hold     token
--   release        retention_ms
--   claim_invoice  order key (canonical string), order id as JSON, lease_ms, token, retention_ms
--   finish_invoice token, retention_ms
--   abort_invoice  token, 'lapsed' or 'held' (what the hold becomes)
--   get            -
-- Reply: {outcome, now_ms, extra, field, value, ...} (see _ledger.lua).
local key, cmd, a = KEYS[1], ARGV[1], ARGV

if cmd == 'get' then return ledger.reply(key, 'ok') end
if cmd == 'claim_hold' then
  return ledger.claim_hold(key, a[2], a[3], tonumber(a[4]), tonumber(a[5]), a[6], tonumber(a[7]))
end
if cmd == 'finish_hold' then return ledger.finish_hold(key, a[2], tonumber(a[3])) end
if cmd == 'abort_hold' then return ledger.abort_hold(key, a[2]) end
if cmd == 'release' then return ledger.release(key, tonumber(a[2])) end
if cmd == 'claim_invoice' then
  return ledger.claim_invoice(key, a[2], a[3], tonumber(a[4]), a[5], tonumber(a[6]))
end
if cmd == 'finish_invoice' then return ledger.finish_invoice(key, a[2], tonumber(a[3])) end
if cmd == 'abort_invoice' then return ledger.abort_invoice(key, a[2], a[3]) end
return redis.error_reply('ledger.lua: unknown command ' .. tostring(cmd))
