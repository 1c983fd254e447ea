-- _charge.lua: runs right after _prelude.lua in every script: the rate limit of an API call,
-- charged in the same atomic step as the call's own work (tevo_hold/ratelimit.py).
--
-- When ARGV[1] is '!charge', the call is charged to its API key's budget first:
--   ARGV[2]            n, the number of limits (each with a key of its own)
--   ARGV[3 .. 2 + 2n]  each limit's amount and period in ms
--   KEYS[#KEYS - n + 1 .. #KEYS]  each limit's key (a string: its theoretical arrival time)
-- These are taken off ARGV and KEYS, so the script's own code reads them as if never there. Each
-- limit is a GCRA (generic cell rate algorithm) with a burst of amount: up to amount calls at
-- once, then one every period / amount ms. So over any window of one period at most
-- 2 * amount - 1 calls pass (a burst, then the steady rate), and in the long run amount per
-- period. Over any limit the script answers {'rate_limited', now_ms, retry_ms, i} before
-- anything else runs or is written: i (from 1) is the limit whose wait is the longest, retry_ms
-- that wait, after which every limit lets a call through. Otherwise every limit is charged and
-- the script goes on. Calls refused this way are not charged.
--
-- The arithmetic is exact, in integers: a time is kept as ms + frac / amount (0 <= frac <
-- amount), a step of period / amount ms as q + r / amount. The limits ratelimit.py accepts (a
-- period of at most a year, an amount of at most 10^9) keep every number well within a double's
-- 2^53. A time is stored as 'ms.ffffffffff', frac in ten digits: still a number in ms, within a
-- millisecond of the exact time, for an earlier version of this script sharing the Redis in a
-- rolling deploy (it reads tonumber(value) and writes '%.3f', which this one reads as ms).
if ARGV[1] == '!charge' then
  local n, first = tonumber(ARGV[2]), #KEYS - tonumber(ARGV[2])
  local tats = {}
  local refusal = nil
  for i = 1, n do
    local amount, period = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local q = math.floor(period / amount)
    local r = period - q * amount
    -- the theoretical arrival time, or now if it has passed (or the key is gone)
    local ms, frac = now, 0
    local kept = redis.call('GET', KEYS[first + i])
    if kept then
      local m, f = string.match(kept, '^(%d+)%.(%d%d%d%d%d%d%d%d%d%d)$')
      if m then
        m, f = tonumber(m), tonumber(f)
      else -- an earlier version's ms, '%.3f'
        m, f = math.ceil(tonumber(kept) or 0), 0
      end
      if m > now or (m == now and f > 0) then ms, frac = m, f end
    end
    -- the time after this call: one step later
    ms, frac = ms + q, frac + r
    if frac >= amount then ms, frac = ms + 1, frac - amount end
    -- this call passes if it is due by then less a period: wait = ceil(that - now) <= 0
    local wait = ms - period - now + ((frac > 0) and 1 or 0)
    if wait > 0 and (not refusal or wait > refusal[3]) then
      refusal = {'rate_limited', now, wait, i}
    end
    tats[i] = {ms, frac}
  end
  if refusal then return refusal end
  for i = 1, n do
    local ms, frac = tats[i][1], tats[i][2]
    local ttl = ms - now + ((frac > 0) and 1 or 0) -- at least 1: a step is more than 0
    -- pcall: a full Redis (maxmemory, noeviction) refuses the write; the call goes on uncharged,
    -- and can then only read, as a full Redis allows (the limit never fails a call by itself)
    redis.pcall('SET', KEYS[first + i], string.format('%.0f.%010.0f', ms, frac),
      'PX', string.format('%.0f', ttl))
  end
  for _ = 1, n do table.remove(KEYS) end
  for _ = 1, 2 + 2 * n do table.remove(ARGV, 1) end
end
