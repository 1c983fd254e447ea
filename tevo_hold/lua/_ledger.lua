-- _ledger.lua: the hold records. Three keys per call, all in one hash slot (the global_id's
-- shard, {h<n>}), bound by ledger.bind(first): K.rec, K.events, K.due =
--   KEYS[first]      the record hash     {prefix}:{h<n>}:g:<global_id>
--   KEYS[first + 1]  its audit trail     {prefix}:{h<n>}:a:<global_id>
--   KEYS[first + 2]  the shard's due set {prefix}:{h<n>}:due
--
-- Record fields: rid remote_id, qty quantity, st status (pending|held|released|expired|invoicing|
-- invoiced|invoice_failed), ca created_at, ea expires_at, ra released_at, ia invoiced_at,
-- pr released in the POS (ms since the epoch, by this Redis's clock; set after a lapse, or after
-- a release call: see released_in_pos), ok/oj the order id (canonical / JSON), lu lease until and
-- tok the token of the request holding the lease while st is pending or invoicing, na failed
-- invoice attempts, le last error, rq until when a POS release may come before a POS hold that
-- lands late (lost_hold, or a release of a pending hold), nr failed POS releases or
-- compensations (the backoff of their retries); lk the listing's stock
-- key, on holds made by fused.lua (its release and invoice find the listing by it). While st is
-- pending: uk '1' when an earlier attempt's POS call has no known outcome or held the tickets
-- after its lease had ended (a claim taken over, or made since: it inherits what that call held),
-- cp '1' once the worker has started to compensate (no new POS hold until it is confirmed), ag
-- '1' when a POS hold answered during that compensation (compensate once more).
--
-- A record that work is owed on (pending: a compensation; invoicing or invoice_failed: the
-- invoice) has no TTL: it outlives the work, however long the POS is down. It expires
-- retention ms after its hold's end once it is finished. One owing a POS release ('l' below)
-- keeps a TTL, which each claim and each failed attempt of the release extends past retention
-- ms after it: the release is retried for as long as the POS fails it.
--
-- The due set is an outbox of work a worker must do, each member scored by when it is due:
--   'l' .. global_id  release the hold in the POS: at its deadline if it lapses, or at the lease's
--                     end after a release whose own POS call may not have happened (adapters
--                     whose holds do not lapse on their own)
--   'c' .. global_id  compensate a hold whose POS call had no known outcome: release it in the
--                     POS. Scheduled with every claim at the lease's end, so a request that dies
--                     mid-way is compensated too; finishing or aborting the hold removes it. An
--                     outcome found unknown (a timeout) moves it to a full lease from then: the
--                     POS may still be making that hold, and a release sent before it lands
--                     would give back nothing and leave the hold stranded in the POS.
--   'i' .. global_id  retry a failed invoice
-- A member is written in the same script as the state that needs it, so no work is ever lost.
--
-- Every function answers a reply {outcome, now_ms, extra, record}: outcome 'ok' (this call
-- changed the record), 'replay' (it already was so), 'skip' (a worker's due item that needs no
-- work), or an error code the Python side maps to an exception; extra is the ms a running request
-- still holds its lease (request_in_progress); record is the record's fields as one JSON object
-- (one string: the client decodes it in one step, not field by field), '{}' for none. A function
-- validates before its first write and is safe to run twice with the same arguments. Every change
-- appends an event to the audit trail: at, event, status (the one it leaves the record in), by
-- (the actor), detail.
local ledger = {}
local K = {}

function ledger.bind(first, gid, actor)
  K.rec, K.events, K.due, K.actor = KEYS[first], KEYS[first + 1], KEYS[first + 2], actor
  ledger.gid = gid
end

function ledger.reply(outcome, extra)
  local flat, record = redis.call('HGETALL', K.rec), {}
  for i = 1, #flat, 2 do record[flat[i]] = flat[i + 1] end
  return {outcome, now, extra or 0, cjson.encode(record)}
end

-- The reply for a record this call has just written whole, from its fields {f1, v1, ...}
-- (no HGETALL).
local function written(outcome, fields)
  local record = {}
  for i = 1, #fields, 2 do record[fields[i]] = tostring(fields[i + 1]) end
  return {outcome, now, 0, cjson.encode(record)}
end

local function fail(code, extra) return {code, now, extra or 0, '{}'} end
ledger.fail = fail

-- Append an event: its name, the status the record is left in ('' for none), a detail. The
-- trail is a list of JSON arrays [at, event, status, by, detail], the last AUDIT_MAX of them. (A
-- list: a stream's first node costs Redis 4 KB whatever it holds, and XADD three times RPUSH.)
local AUDIT_MAX = 1000
local function event(name, status, detail)
  local n = redis.call('RPUSH', K.events,
    cjson.encode({tostring(now), name, status or '', K.actor, detail or ''}))
  if n > AUDIT_MAX then redis.call('LTRIM', K.events, -AUDIT_MAX, -1) end
end

local function keep(expires_at, retention)
  -- a record (and its history) lives until its hold's end plus the retention period
  local ttl = math.max(expires_at - now, 0) + retention
  redis.call('PEXPIRE', K.rec, ttl)
  redis.call('PEXPIRE', K.events, ttl)
end

local function owe()
  redis.call('PERSIST', K.rec)
  redis.call('PERSIST', K.events)
end

-- The record and its trail live ms more at least (a POS release still owed: the worker needs
-- them), unless they have no TTL. Never PERSIST for this: a worker or server of a version that
-- knows nothing of it would finish the release and leave the record without a TTL for good.
local function outlive(ms)
  for _, key in ipairs({K.rec, K.events}) do
    local ttl = redis.call('PTTL', key)
    if ttl >= 0 and ttl < ms then redis.call('PEXPIRE', key, ms) end
  end
end

local function wait(lease_until) return math.max(tonumber(lease_until) - now, 0) end

-- Whether a request's claim on a hold was lost while its POS call ran: the hold was compensated
-- (gone), released, or is being compensated (cp). What that call held in the POS is nobody's.
local function claim_lost(st, cp) return not st or st == 'released' or st == 'expired' or cp end

local function due(kind, at) redis.call('ZADD', K.due, at, kind .. ledger.gid) end
local function done(kind) redis.call('ZREM', K.due, kind .. ledger.gid) end

-- The pending hold's POS call has no known outcome: its lease ends now, so that a retry of the
-- hold may take it over at once (the POS is idempotent per global_id), and its compensation (a
-- release in the POS) is due lease ms from now, unless such a retry finishes the hold first. Not
-- sooner: every attempt whose outcome is unknown began before now, and the lease outlasts the
-- POS's slowest call, so by then each has landed in the POS or never will; a release sent
-- before one lands gives back nothing, and the hold it then makes stays stranded in the POS.
local function compensate_later(lease, detail)
  redis.call('HSET', K.rec, 'lu', now)
  due('c', now + lease)
  event('hold_outcome_unknown', 'pending', detail)
end

-- The POS call of an earlier attempt, whose lease had ended, held the tickets there (or may have)
-- while another request's claim is pending on the hold: that claim inherits them. It is marked of
-- unknown outcome (uk), so that should the POS refuse it, the hold is compensated (released in
-- the POS) rather than forgotten, which would leave the earlier call's tickets held there for
-- good with nothing due to give them back. A claim that the POS holds finishes as any other.
local function inherit(detail)
  if redis.call('HGET', K.rec, 'uk') == '1' then return end
  redis.call('HSET', K.rec, 'uk', '1')
  event('hold_answered_late', 'pending', detail)
end

-- A hold's verdict before any write: nil to go ahead, else the final reply.
-- The second value is true when the hold takes over a claim whose POS call has no known outcome;
-- the third, when going ahead, whether a record is there (a claim to take over).
function ledger.check_hold(rid, qty, tok)
  local rec = redis.call('HMGET', K.rec, 'rid', 'qty', 'st', 'lu', 'tok', 'cp', 'uk')
  if not rec[3] then return nil, false, false end
  if rec[1] ~= rid or rec[2] ~= qty then return fail('global_id_conflict') end
  if rec[3] ~= 'pending' then return ledger.reply('replay') end
  -- a compensating release has started and may land after a new POS hold: none is made until
  -- the release is confirmed (the record then goes, and a retry starts afresh)
  if rec[6] then return fail('request_in_progress', math.max(wait(rec[4]), 1000)) end
  if rec[5] ~= tok and tonumber(rec[4]) > now then
    return fail('request_in_progress', wait(rec[4]))
  end
  -- our own claim sent twice, or the claim of a request that died or timed out: take it over
  return nil, rec[5] ~= tok or rec[7] == '1', true
end

-- Write a new hold: 'pending' leased to tok (lease > 0, its compensation scheduled at the
-- lease's end; unknown: it takes over a claim of unknown outcome), or straight 'held' (lease = 0:
-- the POS step already happened atomically). lk, if given, is recorded as the listing's stock
-- key. replacing: false when check_hold found no record (nothing to delete first). A claim
-- taken over keeps the times of the record it replaces, while its deadline is still ahead: the
-- POS is sent the same hold again (a POS that checks an idempotency key's data refused a retry
-- whose expires_at differed, and one that kept the first deadline let the hold lapse before
-- the one TEvo was told). Answers the 'ok' reply with the record.
function ledger.write_hold(rid, qty, ttl, lease, tok, retention, track_lapse, lk, unknown, replacing)
  local ca, ea = now, now + ttl
  if replacing ~= false then
    local old = redis.call('HMGET', K.rec, 'ca', 'ea')
    local old_ea = tonumber(old[2])
    if old_ea and old_ea > now then ca, ea = tonumber(old[1]) or now, old_ea end
  end
  local f = {'rid', rid, 'qty', qty, 'ca', ca, 'ea', ea, 'st', 'held'}
  if lease > 0 then f[10], f[11], f[12], f[13], f[14] = 'pending', 'lu', now + lease, 'tok', tok end
  if lk then
    f[#f + 1] = 'lk'
    f[#f + 1] = lk
  end
  if unknown then
    f[#f + 1] = 'uk'
    f[#f + 1] = '1'
  end
  if replacing ~= false then
    redis.call('DEL', K.rec) -- what a claim taken over left (a new record is written whole)
  end
  redis.call('HSET', K.rec, unpack(f))
  if lease > 0 then
    due('c', now + lease)
    event('hold_requested', 'pending')
    owe()
  else
    if track_lapse == '1' then due('l', ea) end
    event('held', 'held')
    keep(ea, retention)
  end
  return written('ok', f)
end

function ledger.claim_hold(rid, qty, ttl, lease, tok, retention)
  local verdict, unknown, replacing = ledger.check_hold(rid, qty, tok)
  if verdict then return verdict end
  return ledger.write_hold(rid, qty, ttl, lease, tok, retention, '0', nil, unknown, replacing)
end

-- 'lost' when the lease of tok ended while its POS call ran and the hold was compensated,
-- released, or is being compensated meanwhile: what the call held in the POS is left over (see
-- lost_hold). request_in_progress when a retry's claim has taken the hold over meanwhile: that
-- claim inherits what the call held (see inherit).
function ledger.finish_hold(tok, retention, track_lapse)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok', 'lu', 'ea', 'cp')
  local st = rec[1]
  if claim_lost(st, rec[5]) then return fail('lost') end
  if st ~= 'pending' then return ledger.reply('replay') end
  if rec[2] ~= tok then
    inherit('the POS held the tickets for an attempt whose lease had ended')
    return fail('request_in_progress', wait(rec[3]))
  end
  redis.call('HSET', K.rec, 'st', 'held')
  redis.call('HDEL', K.rec, 'lu', 'tok', 'uk')
  done('c')
  if track_lapse == '1' then due('l', tonumber(rec[4])) end
  event('held', 'held')
  keep(tonumber(rec[4]), retention)
  return ledger.reply('ok')
end

-- The POS refused the hold (nothing to give back): forget it, so a retry starts afresh. Unless
-- the claim took over one of unknown outcome: that attempt may have held tickets, which this
-- refusal does not undo, so the hold is compensated as after a timeout (lease ms from now).
function ledger.abort_hold(tok, detail, lease)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok', 'uk')
  if rec[1] == 'pending' and rec[2] == tok then
    if rec[3] then
      compensate_later(lease, 'refused after an attempt of unknown outcome: ' .. (detail or ''))
    else
      redis.call('DEL', K.rec, K.events)
      done('c')
    end
  end
  return {'ok', now, 0, '{}'}
end

-- The POS answered the hold of tok after its lease ended (finish_hold said 'lost'), and what it
-- held there is nobody's: release it in the POS once more, by the worker. A record that a retry
-- has taken over meanwhile owns the tickets: held, nothing to do; pending, it inherits them.
function ledger.lost_hold(rid, qty, ttl, detail)
  local rec = redis.call('HMGET', K.rec, 'st', 'cp', 'rq')
  local st = rec[1]
  if not st then -- compensated and forgotten: a pending record again, compensated at once
    redis.call('HSET', K.rec, 'rid', rid, 'qty', qty, 'ca', now, 'ea', now + ttl, 'st', 'pending',
      'lu', now, 'tok', '', 'uk', '1')
    due('c', now)
  elseif st == 'pending' and rec[2] then -- being compensated: once more when that is done
    redis.call('HSET', K.rec, 'ag', '1')
  elseif st == 'pending' then -- a retry's claim, made since the compensation
    inherit(detail)
    return {'ok', now, 0, '{}'}
  elseif st == 'released' or st == 'expired' then
    -- rq: when the POS release was asked for again; a release whose POS call began before
    -- then may have reached the POS before this hold did, and confirms nothing (released_in_pos).
    -- Never earlier than it was: a release of a hold of unknown outcome set it past when the
    -- other attempts it waits for land (see ledger.release).
    redis.call('HDEL', K.rec, 'pr')
    redis.call('HSET', K.rec, 'rq', math.max(now, tonumber(rec[3]) or now))
    due('l', now)
  else
    return {'ok', now, 0, '{}'}
  end
  event('hold_answered_late', st or 'pending', detail)
  if not st then owe() end -- the trail's TTL, from the compensation
  return {'ok', now, 0, '{}'}
end

-- The POS call's outcome is unknown (timeout): end the lease now, so that a retry of the hold
-- may take over at once, and have the compensation (a release in the POS) run lease ms from now
-- unless one finishes the hold first (see compensate_later). 'lost' when the claim was lost
-- meanwhile, as for finish_hold; a retry's claim made meanwhile inherits what the call may have
-- held, as for finish_hold.
function ledger.unknown_hold(tok, detail, lease)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok', 'cp')
  if rec[1] == 'pending' and rec[2] == tok then
    compensate_later(lease, detail)
  elseif claim_lost(rec[1], rec[3]) then
    return fail('lost')
  elseif rec[1] == 'pending' then
    inherit(detail)
  end
  return {'ok', now, 0, '{}'}
end

function ledger.release(retention, lease, track)
  local rec = redis.call('HMGET', K.rec, 'st', 'ea', 'lu', 'cp')
  local st = rec[1]
  if not st then return fail('hold_not_found') end
  if st == 'pending' and rec[4] then -- being compensated
    return fail('request_in_progress', math.max(wait(rec[3]), 1000))
  end
  if st == 'invoicing' or (st == 'pending' and tonumber(rec[3]) > now) then
    return fail('request_in_progress', wait(rec[3]))
  end
  if st == 'invoiced' or st == 'invoice_failed' then return fail('hold_already_invoiced') end
  if st == 'released' or st == 'expired' then return ledger.reply('replay') end
  -- held, or pending with no request at work on it (its POS call timed out, or its request
  -- died): released, the POS release following as for any release. A release after the deadline
  -- finds the hold lapsed.
  if st == 'pending' then
    redis.call('HDEL', K.rec, 'lu', 'tok', 'uk', 'ag')
    done('c')
    -- The POS may still be making that hold: begun before now, it lands within a lease. A POS
    -- release that begins by now + lease - 1 (rq) may reach the POS first and give back
    -- nothing, so it confirms nothing (released_in_pos); the worker's, due at now + lease,
    -- comes after and does. (Untracked, the POS lets the hold lapse on its own.)
    if track == '1' then redis.call('HSET', K.rec, 'rq', now + lease - 1) end
  end
  local ea = tonumber(rec[2])
  local became = (now >= ea) and 'expired' or 'released'
  redis.call('HSET', K.rec, 'st', became, 'ra', now)
  -- the POS release follows this call; should it not happen, the worker makes it
  if track == '1' then due('l', now + lease) else done('l') end
  event(became, became)
  keep(ea, retention)
  -- the worker needs the record when that POS release comes due, however short the retention
  if track == '1' then outlive(lease + retention) end
  return ledger.reply('ok')
end

function ledger.claim_invoice(order_key, order_json, lease, tok)
  local rec = redis.call('HMGET', K.rec, 'st', 'ok', 'lu', 'tok', 'oj')
  local st = rec[1]
  if not st then return fail('hold_not_found') end
  if st == 'pending' then return fail('request_in_progress', wait(rec[3])) end
  if st == 'released' or st == 'expired' then return fail('hold_released') end
  if st == 'invoiced' then
    if rec[2] == order_key then return ledger.reply('replay') end
    return fail('order_id_conflict')
  end
  if st == 'invoicing' or st == 'invoice_failed' then
    if rec[2] ~= order_key then return fail('order_id_conflict') end
    if st == 'invoicing' and rec[4] ~= tok and tonumber(rec[3]) > now then
      return fail('request_in_progress', wait(rec[3]))
    end
  end
  -- held (live or lapsed), failed before, or a claim sent twice or left by a request that died;
  -- 4711 and "4711" are one order: a retry keeps the first one's spelling, which the POS saw
  if rec[2] == order_key and rec[5] then order_json = rec[5] end
  redis.call('HSET', K.rec, 'st', 'invoicing', 'ok', order_key, 'oj', order_json,
    'lu', now + lease, 'tok', tok)
  done('l')
  -- the invoice is due again at the lease's end: if this request dies, a worker retries it
  due('i', now + lease)
  event('invoice_requested', 'invoicing', order_json)
  owe()
  return ledger.reply('ok')
end

-- The invoice's verdict before any write: nil to go ahead, else the final reply. Going ahead
-- takes the invoice that tok claimed, or, given the order key, a sale of that order whoever
-- claims or failed it now (see finish_invoice). Any other record's answer is request_in_progress
-- (another attempt is at work on it, or was given it back): hold_not_found only for none.
function ledger.check_invoice_owner(tok, order_key)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok', 'lu', 'ok')
  local st = rec[1]
  if st == 'invoiced' then return ledger.reply('replay') end
  if not st then return fail('hold_not_found') end
  if st == 'invoicing' and rec[2] == tok then return nil end
  if order_key and rec[4] == order_key and (st == 'invoicing' or st == 'invoice_failed') then
    return nil
  end
  return fail('request_in_progress', rec[3] and wait(rec[3]) or 0)
end

-- The POS sold the tickets for the invoice of tok, under order order_key (nil: tok's claim only).
-- A sale whose answer came after its lease ended, when another attempt at the same order had
-- taken the invoice over (and may have failed it since), is the sale all the same: the POS is
-- idempotent per global_id, so that attempt sells nothing more, and the invoice is done.
function ledger.finish_invoice(tok, retention, order_key)
  local verdict = ledger.check_invoice_owner(tok, order_key)
  if verdict then return verdict end
  redis.call('HSET', K.rec, 'st', 'invoiced', 'ia', now)
  redis.call('HDEL', K.rec, 'lu', 'tok', 'le')
  done('i')
  event('invoiced', 'invoiced')
  redis.call('PEXPIRE', K.rec, retention)
  redis.call('PEXPIRE', K.events, retention)
  return ledger.reply('ok')
end

-- Whether the record can be invoiced at once (invoice_at_once), from its fields st, ok, na and
-- tok: held, never invoiced before (no order, no failed attempt, no lease).
function ledger.fresh_held(st, ok, na, tok) return st == 'held' and not (ok or na or tok) end

-- claim_invoice then finish_invoice in one step, for a fresh_held record whose tickets this
-- script has just sold: the record, its trail, the due set and its TTL end as those two leave
-- them (both events, at the same time), with no lease and no retry ever scheduled.
function ledger.invoice_at_once(order_key, order_json, retention)
  redis.call('HSET', K.rec, 'st', 'invoiced', 'ok', order_key, 'oj', order_json, 'ia', now)
  done('l')
  event('invoice_requested', 'invoicing', order_json)
  event('invoiced', 'invoiced')
  redis.call('PEXPIRE', K.rec, retention)
  redis.call('PEXPIRE', K.events, retention)
  return ledger.reply('ok')
end

-- Give the hold back the state it had before the invoice of tok: the POS said its tickets are
-- gone ('lapsed': the deadline moves to now, the hold reads expired) or the invoice never
-- reached the POS ('held'). 'ok' when it did; when tok's claim was taken over (its lease ended
-- during the POS call), the invoice is that attempt's and this call changes nothing:
-- request_in_progress while the attempt runs, else 'replay' with the record as it now stands
-- (invoiced, invoice_failed: kept and retried, or given back by that attempt).
function ledger.abort_invoice(tok, becomes, detail, retention)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok', 'ea', 'lu')
  if rec[1] == 'invoicing' and rec[2] ~= tok then
    return fail('request_in_progress', wait(rec[4]))
  end
  if rec[1] ~= 'invoicing' then return ledger.reply('replay') end
  local ea = tonumber(rec[3])
  redis.call('HSET', K.rec, 'st', 'held')
  if becomes == 'lapsed' and ea > now then
    ea = now
    redis.call('HSET', K.rec, 'ea', ea)
  end
  redis.call('HDEL', K.rec, 'ok', 'oj', 'lu', 'tok')
  done('i')
  event('invoice_refused', 'held', detail)
  keep(ea, retention)
  return ledger.reply('ok')
end

-- The POS failed the invoice of tok: the buyer has paid, so it is never dropped. The hold becomes
-- invoice_failed (it can neither lapse nor be released) and a retry is due after retry_ms.
function ledger.fail_invoice(tok, detail, retry_ms)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok')
  if rec[1] == 'invoicing' and rec[2] == tok then
    redis.call('HSET', K.rec, 'st', 'invoice_failed', 'le', detail)
    redis.call('HDEL', K.rec, 'lu', 'tok')
    redis.call('HINCRBY', K.rec, 'na', 1)
    due('i', now + retry_ms)
    event('invoice_failed', 'invoice_failed', detail)
  end
  return ledger.reply('ok')
end

-- A worker takes the due item kind .. gid for lease ms (the item is hidden until then: if the
-- worker dies, another takes it after). 'skip' when nothing is to be done (the item is removed).
function ledger.claim_due(kind, tok, lease, retention)
  local score = redis.call('ZSCORE', K.due, kind .. ledger.gid)
  if not score or tonumber(score) > now then return fail('skip') end
  local rec = redis.call('HMGET', K.rec, 'st', 'ea', 'lu', 'pr')
  local st = rec[1]
  if kind == 'l' then
    local lapsed = st == 'held' and now >= tonumber(rec[2])
    if rec[4] or not (lapsed or st == 'released' or st == 'expired') then
      done('l')
      -- no POS release owed any more: the record lives as long as a finished one (the other
      -- statuses keep the lifetime their own work gives them)
      if st == 'held' or st == 'released' or st == 'expired' then
        keep(tonumber(rec[2]), retention)
      end
      return fail('skip')
    end
  elseif kind == 'c' then
    if st ~= 'pending' then done('c'); return fail('skip') end
    if tonumber(rec[3]) > now then due('c', tonumber(rec[3])); return fail('skip') end
    redis.call('HSET', K.rec, 'lu', now + lease, 'tok', tok, 'cp', '1')
  elseif kind == 'i' then
    if st == 'invoicing' and tonumber(rec[3]) > now then
      due('i', tonumber(rec[3])); return fail('skip')
    end
    if st ~= 'invoice_failed' and st ~= 'invoicing' then done('i'); return fail('skip') end
    redis.call('HSET', K.rec, 'st', 'invoicing', 'lu', now + lease, 'tok', tok)
    event('invoice_retry', 'invoicing')
  else
    return redis.error_reply('unknown due kind ' .. tostring(kind))
  end
  due(kind, now + lease)
  if kind == 'l' then outlive(lease + retention) end
  return ledger.reply('ok')
end

-- The hold was released in the POS (by the worker after a lapse, or after a release call), by a
-- POS call that began after started (ms, this Redis's clock: the now of the release or claim
-- that led to it). Unless that call began by rq (a POS hold that landed late, lost_hold, or that
-- may still land, release), when it may have come too early to undo the hold: the release stays
-- due. The reply's extra is 1 when this call recorded the hold lapsed (the 'lapsed' event: still
-- held, past its deadline, released in the POS by the worker before any release call), else 0:
-- the lapse is counted once, here or by the release that finds no pr.
function ledger.released_in_pos(started, retention)
  local rec = redis.call('HMGET', K.rec, 'st', 'pr', 'rq', 'ea')
  if rec[3] and started <= tonumber(rec[3]) then return {'ok', now, 0, '{}'} end
  done('l')
  if rec[1] then redis.call('HDEL', K.rec, 'nr') end
  local lapsed = 0
  if rec[1] and not rec[2] then
    redis.call('HSET', K.rec, 'pr', now)
    if rec[1] == 'held' then lapsed = 1 end
    event(lapsed == 1 and 'lapsed' or 'pos_released', rec[1], 'released in the POS')
  end
  if rec[1] == 'held' or rec[1] == 'released' or rec[1] == 'expired' then
    keep(tonumber(rec[4]), retention) -- no work owed any more
  end
  return {'ok', now, lapsed, '{}'}
end

-- The worker released a hold of unknown outcome in the POS: forget the hold (its history stays
-- for retention ms). If a POS hold answered meanwhile (ag), compensate once more first.
function ledger.compensated(tok, retention)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok', 'ag')
  if rec[1] == 'pending' and rec[2] == tok then
    if rec[3] then
      redis.call('HDEL', K.rec, 'ag', 'cp', 'nr')
      redis.call('HSET', K.rec, 'lu', now)
      due('c', now)
      event('compensated', 'pending', 'released in the POS; once more, for a hold answered late')
      return {'ok', now, 0, '{}'}
    end
    done('c')
    redis.call('DEL', K.rec)
    event('compensated', '', 'released in the POS after an unknown outcome')
    redis.call('PEXPIRE', K.events, retention)
    return {'ok', now, 0, '{}'}
  end
  -- Not our claim any more. Pending: another worker took the item over when our lease ended,
  -- and its claim is the item now (its worker may die: the item must stay due). Otherwise no
  -- compensation is owed.
  if rec[1] ~= 'pending' then done('c') end
  return {'ok', now, 0, '{}'}
end

-- A worker's POS call failed: try again after retry_ms, doubled per failure of the record's
-- POS releases (nr), at most cap_ms (the lease it held ends). A POS release is retried for as
-- long as it fails: the record outlives each retry by retention ms.
-- A compensation stays started (cp): the release that failed may still land, so a retry of the
-- hold waits until one is confirmed.
function ledger.retry_due(kind, tok, detail, retry_ms, cap_ms, retention)
  local rec = redis.call('HMGET', K.rec, 'st', 'tok')
  local failures = 1
  if rec[1] then failures = redis.call('HINCRBY', K.rec, 'nr', 1) end
  local wait_ms = math.floor(math.min(cap_ms, retry_ms * 2 ^ math.min(failures - 1, 64)))
  if kind == 'c' and rec[1] == 'pending' and rec[2] == tok then
    redis.call('HSET', K.rec, 'lu', now + wait_ms)
  end
  due(kind, now + wait_ms)
  if kind == 'l' then outlive(wait_ms + retention) end
  event(kind == 'l' and 'pos_release_failed' or 'compensation_failed', rec[1], detail)
  return {'ok', now, 0, '{}'}
end
