-- standalone: read-only, so without the shared helpers (store.py prepends them to every other script)
-- Stats in one call: the metadata, the list's TTL, its length and its tail (the Compozy fingerprint of _common.lua's
-- load_counters, checked by the caller), and with ARGV[1] = '1' the first and last three elements. One command and
-- one reply where a pipeline of four or six cost more on the client than the fingerprint's extra read. The metadata
-- comes whole, retry record ('nb_ops', at most 384 bytes) included: sending it costs less than a Lua loop leaving
-- it out (~5 µs per call).
-- KEYS: the first two of every script's (1 messages list, 2 metadata hash). Returns {meta as a flat field/value
-- list, pttl, llen, tail or nil[, first three, last three]}. Writes nothing (runs on a read-only replica).
local LIST, META = KEYS[1], KEYS[2]
local out = {redis.call('HGETALL', META), redis.call('PTTL', LIST), redis.call('LLEN', LIST),
  redis.call('LINDEX', LIST, -1)}
if ARGV[1] == '1' then
  out[5] = redis.call('LRANGE', LIST, 0, 2)
  out[6] = redis.call('LRANGE', LIST, -3, -1)
end
return out
