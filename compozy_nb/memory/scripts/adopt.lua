-- Adopt a list written by another tool (Compozy): replace its elements with the same messages carrying
-- token counts and ids (computed by the caller), and rebuild every counter - only if the list still holds
-- exactly what the caller read. ARGV: n, then n x (old_raw, new_raw, tokens, id, role).
-- Returns 1 when adopted, 0 when the list changed meanwhile (the caller reads again).
local n = tonumber(ARGV[1])
local current = redis.call('LRANGE', LIST, 0, -1)
if #current ~= n then return 0 end
for i = 1, n do
  if current[i] ~= ARGV[2 + (i - 1) * 5] then return 0 end
end
local new, ids, roles = {}, {}, {}
local tokens = 0
for i = 1, n do
  local base = 2 + (i - 1) * 5
  new[#new + 1] = ARGV[base + 1]
  tokens = tokens + tonumber(ARGV[base + 2])
  ids[#ids + 1] = ARGV[base + 3]
  roles[ARGV[base + 4]] = (roles[ARGV[base + 4]] or 0) + 1
end
local ttl = redis.call('PTTL', LIST)
redis.call('DEL', LIST, IDS)
push_all(LIST, new, false)
add_ids(ids)
clear_roles()
bump_roles(roles)
redis.call('HSET', META, 'message_count', n, 'token_count', tokens, 'nb_count', n)
if ttl > 0 then
  redis.call('PEXPIRE', LIST, ttl)
  redis.call('PEXPIRE', META, ttl)
  redis.call('PEXPIRE', IDS, ttl)
end
return 1
