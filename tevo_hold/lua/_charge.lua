-- _charge.lua: runs right after _prelude.lua in every script: the rate limit of an API call,
-- charged in the same atomic step as the call's own work (tevo_hold/ratelimit.py).
--
-- When ARGV[1] is '!charge', the call is charged to its API key's budget first:
--   ARGV[2]            n, the number of limits (each with a key of its own)
--   ARGV[3 .. 2 + 2n]  each limit's amount and period in ms
--   KEYS[#KEYS - n + 1 .. #KEYS]  each limit's key (a string: its theoretical arrival time)
-- These are taken off ARGV and KEYS, so the script's own code reads them as if never there. Each
-- limit is a GCRA (generic cell rate algorithm): up to amount calls at once, then one every
-- period / amount ms, which keeps any window of one period to at most amount calls. Over any
-- limit the script answers {'rate_limited', now_ms, retry_ms, i} (i: the limit hit, from 1)
-- before anything else runs or is written; otherwise every limit is charged and the script goes
-- on. Calls refused this way are not charged.
if ARGV[1] == '!charge' then
  local n, first = tonumber(ARGV[2]), #KEYS - tonumber(ARGV[2])
  local tats, steps = {}, {}
  local refusal = nil
  for i = 1, n do
    local amount, period = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
    local step = period / amount
    local tat = math.max(tonumber(redis.call('GET', KEYS[first + i])) or now, now)
    local allowed_at = tat + step - period
    if now < allowed_at and not refusal then
      refusal = {'rate_limited', now, math.ceil(allowed_at - now), i}
    end
    tats[i], steps[i] = tat, step
  end
  if refusal then return refusal end
  for i = 1, n do
    local tat = tats[i] + steps[i]
    -- pcall: a full Redis (maxmemory, noeviction) refuses the write; the call goes on uncharged,
    -- and can then only read, as a full Redis allows (the limit never fails a call by itself)
    redis.pcall('SET', KEYS[first + i], string.format('%.3f', tat), 'PX', math.ceil(tat - now))
  end
  for _ = 1, n do table.remove(KEYS) end
  for _ = 1, 2 + 2 * n do table.remove(ARGV, 1) end
end
