-- ledger.lua: one ledger command per call. Assembled from _prelude.lua and _ledger.lua.
--
-- KEYS[1..3]  the hold's record hash, its audit trail, its shard's due set (one slot)
-- ARGV[1]     command; ARGV[2] global_id; ARGV[3] actor (who: 'api', 'worker', 'cli', ...);
--             then the command's arguments:
--   claim_hold      remote_id, quantity, ttl_ms, lease_ms, token, retention_ms
--   finish_hold     token, retention_ms, track_lapse ('1' to schedule the POS release at lapse)
--   abort_hold      token, detail, lease_ms (a compensation owed is due lease_ms from now)
--   unknown_hold    token, detail, lease_ms (the compensation is due lease_ms from now)
--   release         retention_ms, lease_ms, track ('1': a POS release is due at the lease's end
--                   unless released_in_pos confirms it first; of a pending hold, only a POS
--                   release that begins then or later confirms it)
--   lost_hold       remote_id, quantity, ttl_ms, detail
--   claim_invoice   order key (canonical string), order id as JSON, lease_ms, token
--   finish_invoice  token, retention_ms, order key ('' for none: the claim of token alone)
--   abort_invoice   token, 'lapsed' or 'held' (what the hold becomes), detail, retention_ms
--   fail_invoice    token, detail, retry_ms
--   claim_due       kind ('l', 'c' or 'i'), token, lease_ms, retention_ms
--   released_in_pos started_ms (the now of the release or claim before the POS call),
--                   retention_ms
--   compensated     token, retention_ms
--   retry_due       kind, token, detail, retry_ms (doubled per failure), cap_ms, retention_ms
--   get             history ('1' to add the audit trail to the reply)
-- Reply: {outcome, now_ms, extra, {field, value, ...}} (see _ledger.lua); get with history adds
-- the trail's entries as a fifth element.
local cmd, a = ARGV[1], ARGV
ledger.bind(1, a[2], a[3])

if cmd == 'get' then
  local r = ledger.reply('ok')
  if a[4] == '1' then r[5] = redis.call('LRANGE', KEYS[2], 0, -1) end
  return r
end
if cmd == 'claim_hold' then
  return ledger.claim_hold(a[4], a[5], tonumber(a[6]), tonumber(a[7]), a[8], tonumber(a[9]))
end
if cmd == 'finish_hold' then return ledger.finish_hold(a[4], tonumber(a[5]), a[6]) end
if cmd == 'abort_hold' then return ledger.abort_hold(a[4], a[5], tonumber(a[6])) end
if cmd == 'lost_hold' then return ledger.lost_hold(a[4], a[5], tonumber(a[6]), a[7]) end
if cmd == 'unknown_hold' then return ledger.unknown_hold(a[4], a[5], tonumber(a[6])) end
if cmd == 'release' then return ledger.release(tonumber(a[4]), tonumber(a[5]), a[6]) end
if cmd == 'claim_invoice' then
  return ledger.claim_invoice(a[4], a[5], tonumber(a[6]), a[7])
end
if cmd == 'finish_invoice' then
  return ledger.finish_invoice(a[4], tonumber(a[5]), a[6] ~= '' and a[6] or nil)
end
if cmd == 'abort_invoice' then
  return ledger.abort_invoice(a[4], a[5], a[6], tonumber(a[7]))
end
if cmd == 'fail_invoice' then return ledger.fail_invoice(a[4], a[5], tonumber(a[6])) end
if cmd == 'claim_due' then
  return ledger.claim_due(a[4], a[5], tonumber(a[6]), tonumber(a[7]))
end
if cmd == 'released_in_pos' then return ledger.released_in_pos(tonumber(a[4]), tonumber(a[5])) end
if cmd == 'compensated' then return ledger.compensated(a[4], tonumber(a[5])) end
if cmd == 'retry_due' then
  return ledger.retry_due(a[4], a[5], a[6], tonumber(a[7]), tonumber(a[8]), tonumber(a[9]))
end
return redis.error_reply('ledger.lua: unknown command ' .. tostring(cmd))
