-- What stats reports, in one round trip, and whether the counters can be trusted (load_counters' fingerprint:
-- 0 means another tool changed the list and the caller adopts it first). Writes nothing.
-- ARGV: with_content ('1': also the first three and the last three messages).
-- Returns {metadata as a flat field/value list, pttl, llen, trusted (1/0)[, first three, last three]}.
local count = load_counters()
local out = {redis.call('HGETALL', META), redis.call('PTTL', LIST), redis.call('LLEN', LIST), count and 1 or 0}
if ARGV[1] == '1' then
  out[5] = redis.call('LRANGE', LIST, 0, 2)
  out[6] = redis.call('LRANGE', LIST, -3, -1)
end
return out
