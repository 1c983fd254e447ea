-- charge.lua: a rate-limit charge alone, for a call whose own keys lie in another hash slot
-- (on a Redis Cluster). Assembled from _prelude.lua and _charge.lua, which does the work.
--
-- KEYS  the limits' keys, as _charge.lua reads them (one API key's: one hash tag, one slot)
-- ARGV  '!charge' and the limits, as _charge.lua reads them
-- Reply: {'ok', now_ms} once charged, or _charge.lua's rate_limited answer.
return {'ok', now}
