-- Adopt a list written by another tool (Compozy): replace its elements with the same messages carrying
-- token counts and ids (computed by the caller), and rebuild every counter - only if the list still holds
-- exactly what the caller read. ARGV: n, then n x (old_raw, new_raw, tokens, id, role).
-- Returns 1 when adopted, 0 when the list changed meanwhile (the caller reads again). Idempotent: a re-send
-- finds the new elements, not the old ones, and returns 0 without writing.
local n = int_arg(ARGV[1], MAX_INT)
if not n or #ARGV ~= 1 + n * 5 then return arg_error('n') end
local new, ids, roles = {}, {}, {}
local tokens = 0
for i = 1, n do
  local base = 2 + (i - 1) * 5
  local t = int_arg(ARGV[base + 2], MAX_INT)
  if not t then return arg_error('tokens of message ' .. (i - 1)) end
  if ARGV[base + 3] == '' then return arg_error('id of message ' .. (i - 1)) end
  new[#new + 1] = ARGV[base + 1]
  tokens = tokens + t
  ids[#ids + 1] = ARGV[base + 3]
  roles[ARGV[base + 4]] = (roles[ARGV[base + 4]] or 0) + 1
end
local current = redis.call('LRANGE', LIST, 0, -1)
if #current ~= n then return 0 end
for i = 1, n do
  if current[i] ~= ARGV[2 + (i - 1) * 5] then return 0 end
end
local ttl = redis.call('PTTL', LIST)
redis.call('DEL', LIST, IDS)
push_all(LIST, new, false)
add_ids(ids)
clear_roles()
bump_roles(roles)
save_counters(n, tokens)
if ttl > 0 then
  redis.call('PEXPIRE', LIST, ttl)
  redis.call('PEXPIRE', META, ttl)
  redis.call('PEXPIRE', IDS, ttl)
end
log_event({ids = ids, count = n, messages = n, tokens = tokens})
return 1
