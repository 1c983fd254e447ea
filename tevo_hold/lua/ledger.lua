-- ledger.lua: the hold records, one hash per global_id. One script, one command per call
-- (ARGV[1]); every command touches only KEYS[1], so on a Redis Cluster it runs in one slot.
--
-- KEYS[1]  the hold's record hash: {prefix}:{g:<global_id>}
--
-- ARGV[1]  command, one of:
--   claim_hold     ARGV[2] remote_id, ARGV[3] quantity, ARGV[4] ttl_ms, ARGV[5] lease_ms,
--                  ARGV[6] token, ARGV[7] retention_ms
--   finish_hold    ARGV[2] token, ARGV[3] retention_ms
--   abort_hold     ARGV[2] token
--   release        ARGV[2] retention_ms
--   claim_invoice  ARGV[2] order key (canonical string), ARGV[3] order id as JSON,
--                  ARGV[4] lease_ms, ARGV[5] token, ARGV[6] retention_ms
--   finish_invoice ARGV[2] token, ARGV[3] retention_ms
--   abort_invoice  ARGV[2] token, ARGV[3] 'lapsed' or 'held' (what the hold becomes)
--   get            (no more arguments)
--
-- Record fields: rid remote_id, qty quantity, st status (pending|held|released|expired|invoicing|
-- invoiced), ca created_at, ea expires_at, ra released_at, ia invoiced_at (all ms since the epoch,
-- by this Redis's clock), ok/oj the order id (canonical / JSON), lu lease until (ms) and tok the
-- token of the request that holds the lease while st is pending or invoicing.
--
-- Reply: {outcome, now_ms, wait_ms, field, value, ...}. outcome is 'ok' (this call changed the
-- record), 'replay' (it was already so: a retry), or an error code that the Python side maps to a
-- typed exception; wait_ms is how long a running request still holds its lease.
--
-- Every command is safe to run twice with the same arguments (redis-py may resend a script whose
-- reply it lost): a token identifies the request that holds a lease, and each write checks first.
-- Each command validates before its first write, so an error leaves nothing half-done.

local key = KEYS[1]
local cmd = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function reply(outcome, wait)
  local r = {outcome, now, wait or 0}
  local all = redis.call('HGETALL', key)
  for i = 1, #all do r[#r + 1] = all[i] end
  return r
end

local function keep(expires_at, retention)
  -- the record lives until its hold's end plus the retention period
  local ttl = math.max(expires_at - now, 0) + retention
  redis.call('PEXPIRE', key, ttl)
end

local function lease_wait(r)
  return math.max(tonumber(r) - now, 0)
end

if cmd == 'get' then
  return reply('ok')
end

if cmd == 'claim_hold' then
  local rid, qty, ttl, lease, tok, retention =
    ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
  local rec = redis.call('HMGET', key, 'rid', 'qty', 'st', 'lu', 'tok')
  if rec[3] then
    if rec[1] ~= rid or rec[2] ~= qty then return {'global_id_conflict', now, 0} end
    if rec[3] ~= 'pending' then return reply('replay') end
    if rec[5] ~= tok and tonumber(rec[4]) > now then
      return {'request_in_progress', now, lease_wait(rec[4])}
    end
    -- our own claim sent twice, or a claim whose request died: take it (again)
  end
  redis.call('HSET', key, 'rid', rid, 'qty', qty, 'st', 'pending', 'ca', now, 'ea', now + ttl,
    'lu', now + lease, 'tok', tok)
  keep(now + ttl, retention)
  return reply('ok')
end

if cmd == 'finish_hold' then
  local tok, retention = ARGV[2], tonumber(ARGV[3])
  local rec = redis.call('HMGET', key, 'st', 'tok', 'lu', 'ea')
  if not rec[1] then return {'hold_not_found', now, 0} end
  if rec[1] ~= 'pending' then return reply('replay') end
  if rec[2] ~= tok then return {'request_in_progress', now, lease_wait(rec[3])} end
  redis.call('HSET', key, 'st', 'held')
  redis.call('HDEL', key, 'lu', 'tok')
  keep(tonumber(rec[4]), retention)
  return reply('ok')
end

if cmd == 'abort_hold' then
  local rec = redis.call('HMGET', key, 'st', 'tok')
  if rec[1] == 'pending' and rec[2] == ARGV[2] then redis.call('DEL', key) end
  return {'ok', now, 0}
end

if cmd == 'release' then
  local retention = tonumber(ARGV[2])
  local rec = redis.call('HMGET', key, 'st', 'ea', 'lu')
  local st = rec[1]
  if not st then return {'hold_not_found', now, 0} end
  if st == 'pending' or st == 'invoicing' then
    return {'request_in_progress', now, lease_wait(rec[3])}
  end
  if st == 'invoiced' then return {'hold_already_invoiced', now, 0} end
  if st == 'released' or st == 'expired' then return reply('replay') end
  -- held: a release after the deadline finds the hold lapsed
  local ea = tonumber(rec[2])
  redis.call('HSET', key, 'st', (now >= ea) and 'expired' or 'released', 'ra', now)
  keep(ea, retention)
  return reply('ok')
end

if cmd == 'claim_invoice' then
  local order_key, order_json, lease, tok, retention =
    ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
  local rec = redis.call('HMGET', key, 'st', 'ok', 'lu', 'tok', 'ea')
  local st = rec[1]
  if not st then return {'hold_not_found', now, 0} end
  if st == 'pending' then return {'request_in_progress', now, lease_wait(rec[3])} end
  if st == 'released' or st == 'expired' then return {'hold_released', now, 0} end
  if st == 'invoiced' then
    if rec[2] == order_key then return reply('replay') end
    return {'order_id_conflict', now, 0}
  end
  if st == 'invoicing' then
    if rec[2] ~= order_key then return {'order_id_conflict', now, 0} end
    if rec[4] ~= tok and tonumber(rec[3]) > now then
      return {'request_in_progress', now, lease_wait(rec[3])}
    end
  end
  -- held (live or lapsed), or an invoice claim sent twice or left by a request that died
  redis.call('HSET', key, 'st', 'invoicing', 'ok', order_key, 'oj', order_json,
    'lu', now + lease, 'tok', tok)
  keep(tonumber(rec[5]), retention)
  return reply('ok')
end

if cmd == 'finish_invoice' then
  local tok, retention = ARGV[2], tonumber(ARGV[3])
  local rec = redis.call('HMGET', key, 'st', 'tok', 'lu')
  if rec[1] == 'invoiced' then return reply('replay') end
  if rec[1] ~= 'invoicing' then return {'hold_not_found', now, 0} end
  if rec[2] ~= tok then return {'request_in_progress', now, lease_wait(rec[3])} end
  redis.call('HSET', key, 'st', 'invoiced', 'ia', now)
  redis.call('HDEL', key, 'lu', 'tok')
  redis.call('PEXPIRE', key, retention)
  return reply('ok')
end

if cmd == 'abort_invoice' then
  local rec = redis.call('HMGET', key, 'st', 'tok', 'ea')
  if rec[1] == 'invoicing' and rec[2] == ARGV[2] then
    redis.call('HSET', key, 'st', 'held')
    if ARGV[3] == 'lapsed' and tonumber(rec[3]) > now then redis.call('HSET', key, 'ea', now) end
    redis.call('HDEL', key, 'ok', 'oj', 'lu', 'tok')
  end
  return reply('ok')
end

return redis.error_reply('ledger.lua: unknown command ' .. tostring(cmd))
