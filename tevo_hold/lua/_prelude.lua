-- _prelude.lua: opens every script. tevo-hold's scripts are assembled from library files
-- (_*.lua, each defining one local table of functions) and one entry file that reads KEYS and
-- ARGV; see tevo_hold/_redis.py. `now` is this Redis's clock in ms: one clock for every process.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
