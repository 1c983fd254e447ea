-- _ledger.lua: the hold records, one hash per global_id: {prefix}:{g:<global_id>}.
--
-- Record fields: rid remote_id, qty quantity, st status (pending|held|released|expired|invoicing|
-- invoiced), ca created_at, ea expires_at, ra released_at, ia invoiced_at (ms since the epoch, by
-- this Redis's clock), ok/oj the order id (canonical string / JSON), lu lease until (ms) and tok the
-- token of the request holding the lease while st is pending or invoicing.
--
-- Every function takes the record's key first and answers a reply
-- {outcome, now_ms, extra, field, value, ...}: outcome 'ok' (this call changed the record),
-- 'replay' (it already was so: a retry), or an error code the Python side maps to an exception;
-- extra is the ms a running request still holds its lease (request_in_progress). A function
-- validates before its first write, and is safe to run twice with the same arguments.
local ledger = {}

function ledger.reply(key, outcome, extra)
  local r = {outcome, now, extra or 0}
  local all = redis.call('HGETALL', key)
  for i = 1, #all do r[#r + 1] = all[i] end
  return r
end

local function fail(code, extra) return {code, now, extra or 0} end

local function keep(key, expires_at, retention)
  -- a record lives until its hold's end plus the retention period
  redis.call('PEXPIRE', key, math.max(expires_at - now, 0) + retention)
end

local function wait(lease_until) return math.max(tonumber(lease_until) - now, 0) end

-- A hold's verdict before any write: nil to go ahead, else the final reply.
function ledger.check_hold(key, rid, qty, tok)
  local rec = redis.call('HMGET', key, 'rid', 'qty', 'st', 'lu', 'tok')
  if not rec[3] then return nil end
  if rec[1] ~= rid or rec[2] ~= qty then return fail('global_id_conflict') end
  if rec[3] ~= 'pending' then return ledger.reply(key, 'replay') end
  if rec[5] ~= tok and tonumber(rec[4]) > now then return fail('request_in_progress', wait(rec[4])) end
  return nil -- our own claim sent twice, or the claim of a request that died: take it over
end

-- Write a new hold: 'pending' leased to tok (lease_ms > 0), or straight 'held' (lease_ms = 0).
function ledger.write_hold(key, rid, qty, ttl, lease, tok, retention)
  redis.call('DEL', key)
  redis.call('HSET', key, 'rid', rid, 'qty', qty, 'ca', now, 'ea', now + ttl)
  if lease > 0 then
    redis.call('HSET', key, 'st', 'pending', 'lu', now + lease, 'tok', tok)
  else
    redis.call('HSET', key, 'st', 'held')
  end
  keep(key, now + ttl, retention)
end

function ledger.claim_hold(key, rid, qty, ttl, lease, tok, retention)
  local verdict = ledger.check_hold(key, rid, qty, tok)
  if verdict then return verdict end
  ledger.write_hold(key, rid, qty, ttl, lease, tok, retention)
  return ledger.reply(key, 'ok')
end

function ledger.finish_hold(key, tok, retention)
  local rec = redis.call('HMGET', key, 'st', 'tok', 'lu', 'ea')
  if not rec[1] then return fail('hold_not_found') end
  if rec[1] ~= 'pending' then return ledger.reply(key, 'replay') end
  if rec[2] ~= tok then return fail('request_in_progress', wait(rec[3])) end
  redis.call('HSET', key, 'st', 'held')
  redis.call('HDEL', key, 'lu', 'tok')
  keep(key, tonumber(rec[4]), retention)
  return ledger.reply(key, 'ok')
end

function ledger.abort_hold(key, tok)
  local rec = redis.call('HMGET', key, 'st', 'tok')
  if rec[1] == 'pending' and rec[2] == tok then redis.call('DEL', key) end
  return {'ok', now, 0}
end

function ledger.release(key, retention)
  local rec = redis.call('HMGET', key, 'st', 'ea', 'lu')
  local st = rec[1]
  if not st then return fail('hold_not_found') end
  if st == 'pending' or st == 'invoicing' then return fail('request_in_progress', wait(rec[3])) end
  if st == 'invoiced' then return fail('hold_already_invoiced') end
  if st == 'released' or st == 'expired' then return ledger.reply(key, 'replay') end
  -- held: a release after the deadline finds the hold lapsed
  local ea = tonumber(rec[2])
  redis.call('HSET', key, 'st', (now >= ea) and 'expired' or 'released', 'ra', now)
  keep(key, ea, retention)
  return ledger.reply(key, 'ok')
end

function ledger.claim_invoice(key, order_key, order_json, lease, tok, retention)
  local rec = redis.call('HMGET', key, 'st', 'ok', 'lu', 'tok', 'ea')
  local st = rec[1]
  if not st then return fail('hold_not_found') end
  if st == 'pending' then return fail('request_in_progress', wait(rec[3])) end
  if st == 'released' or st == 'expired' then return fail('hold_released') end
  if st == 'invoiced' then
    if rec[2] == order_key then return ledger.reply(key, 'replay') end
    return fail('order_id_conflict')
  end
  if st == 'invoicing' then
    if rec[2] ~= order_key then return fail('order_id_conflict') end
    if rec[4] ~= tok and tonumber(rec[3]) > now then
      return fail('request_in_progress', wait(rec[3]))
    end
  end
  -- held (live or lapsed), or an invoice claim sent twice or left by a request that died
  redis.call('HSET', key, 'st', 'invoicing', 'ok', order_key, 'oj', order_json,
    'lu', now + lease, 'tok', tok)
  keep(key, tonumber(rec[5]), retention)
  return ledger.reply(key, 'ok')
end

-- The invoice's verdict before any write: nil to go ahead, else the final reply.
function ledger.check_invoice_owner(key, tok)
  local rec = redis.call('HMGET', key, 'st', 'tok', 'lu')
  if rec[1] == 'invoiced' then return ledger.reply(key, 'replay') end
  if rec[1] ~= 'invoicing' then return fail('hold_not_found') end
  if rec[2] ~= tok then return fail('request_in_progress', wait(rec[3])) end
  return nil
end

function ledger.finish_invoice(key, tok, retention)
  local verdict = ledger.check_invoice_owner(key, tok)
  if verdict then return verdict end
  redis.call('HSET', key, 'st', 'invoiced', 'ia', now)
  redis.call('HDEL', key, 'lu', 'tok')
  redis.call('PEXPIRE', key, retention)
  return ledger.reply(key, 'ok')
end

-- Give the hold back the state it had before the invoice of tok; 'lapsed' brings its deadline
-- forward to now (the POS no longer holds its tickets).
function ledger.abort_invoice(key, tok, becomes)
  local rec = redis.call('HMGET', key, 'st', 'tok', 'ea')
  if rec[1] == 'invoicing' and rec[2] == tok then
    redis.call('HSET', key, 'st', 'held')
    if becomes == 'lapsed' and tonumber(rec[3]) > now then redis.call('HSET', key, 'ea', now) end
    redis.call('HDEL', key, 'ok', 'oj', 'lu', 'tok')
  end
  return ledger.reply(key, 'ok')
end
