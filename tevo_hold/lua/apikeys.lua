-- apikeys.lua: the managed API keys (tevo_hold/auth.py). Assembled from _prelude.lua and this.
--
-- KEYS[1]  the names hash (name -> digest); KEYS[2] one key's record hash; both in one slot
-- ARGV[1]  command, then its arguments:
--   create  name, prefix, digest  -> {'ok', created_at} or {'name_taken'}; the same call sent
--                                    twice (a reply lost, redis-py's retry) answers 'ok' again
--   lookup  touch_ms              -> {} for no such key, else {name, revoked_at or ''}; sets
--                                    last_used_at to now when it is touch_ms old or more (unless
--                                    Redis is full: the key still works, untouched)
--   revoke  name, digest          -> {'ok', revoked_at} (revoked_at: now, or when it was)
-- A record holds: name, prefix, created_at, last_used_at, revoked_at (ms of this Redis's clock).
-- It never holds the key itself: only its digest, in the record's name and in the names hash.
local cmd = ARGV[1]

if cmd == 'create' then
  local name, prefix, digest = ARGV[2], ARGV[3], ARGV[4]
  local taken = redis.call('HGET', KEYS[1], name)
  if taken == digest then -- this very key (a digest of a new random key is never met twice)
    return {'ok', tonumber(redis.call('HGET', KEYS[2], 'created_at'))}
  end
  if taken or redis.call('EXISTS', KEYS[2]) == 1 then
    return {'name_taken'}
  end
  redis.call('HSET', KEYS[1], name, digest)
  redis.call('HSET', KEYS[2], 'name', name, 'prefix', prefix, 'created_at', now)
  return {'ok', now}
end

if cmd == 'lookup' then
  local f = redis.call('HMGET', KEYS[2], 'name', 'revoked_at', 'last_used_at')
  if not f[1] then return {} end
  if not f[2] and (not f[3] or now - tonumber(f[3]) >= tonumber(ARGV[2])) then
    -- pcall: a full Redis (maxmemory, noeviction) refuses the write, and authentication goes
    -- on: a key is not shut out for want of a timestamp
    redis.pcall('HSET', KEYS[2], 'last_used_at', now)
  end
  return {f[1], f[2] or ''}
end

if cmd == 'revoke' then
  if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return {'unknown'} end
  local at = redis.call('HGET', KEYS[2], 'revoked_at')
  if not at then
    at = now
    redis.call('HSET', KEYS[2], 'revoked_at', at)
  end
  return {'ok', at}
end

return redis.error_reply('apikeys.lua: unknown command ' .. tostring(cmd))
