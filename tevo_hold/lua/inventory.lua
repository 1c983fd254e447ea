-- inventory.lua: one command on one listing per call. Assembled from _prelude.lua and
-- _inventory.lua.
--
-- KEYS[1..3]  the listing's stock hash, holds hash, deadlines zset (one hash tag: one slot)
-- KEYS[4]     the sale marker of the global_id (take and sell only)
-- ARGV[1]     command, then its arguments:
--   take     global_id, quantity, deadline_ms
--   release  global_id
--   sell     global_id, quantity, retention_ms[, the hold's deadline_ms: see check_sell]
--   set      on_hand
--   show     -
-- Reply: {outcome, on_hand, held, sold}.
local L, cmd, a = inventory.keys(1), ARGV[1], ARGV
local outcome

if cmd == 'take' then outcome = inventory.take(L, a[2], tonumber(a[3]), tonumber(a[4]))
elseif cmd == 'release' then outcome = inventory.release(L, a[2])
elseif cmd == 'sell' then
  outcome = inventory.sell(L, a[2], tonumber(a[3]), tonumber(a[4]), tonumber(a[5]))
elseif cmd == 'set' then outcome = inventory.set(L, a[2])
elseif cmd == 'show' then outcome = inventory.show(L)
else return redis.error_reply('inventory.lua: unknown command ' .. tostring(cmd)) end

local on_hand, held, sold = inventory.counts(L)
return {outcome, on_hand, held, sold}
