-- Append (or, in mode 'replace', write) messages with exact token accounting, id de-duplication,
-- limit enforcement (evicting the oldest non-system messages into the archive) and TTL, atomically.
-- ARGV: mode, ttl_ms, max_messages, max_tokens, archive_max, n, then n x (raw, tokens, id, role).
-- Returns {accepted, message_count, token_count, evicted, duplicates, evicted_tokens}.
-- Nothing is written when the result cannot fit the limits (error LIMIT_EXCEEDED).
local mode = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local max_messages = tonumber(ARGV[3])
local max_tokens = tonumber(ARGV[4])
local archive_max = tonumber(ARGV[5])
local n = tonumber(ARGV[6])

local count, tokens = 0, 0
if mode ~= 'replace' then count, tokens = load_counters() end

-- new messages, without duplicates (ids already stored, or repeated within this batch)
local new = {}
local seen = {}
local duplicates = 0
for i = 0, n - 1 do
  local base = 7 + i * 4
  local id = ARGV[base + 2]
  if seen[id] or (mode ~= 'replace' and redis.call('SISMEMBER', IDS, id) == 1) then
    duplicates = duplicates + 1
  else
    seen[id] = true
    new[#new + 1] = {raw = ARGV[base], tokens = tonumber(ARGV[base + 1]), id = id, role = ARGV[base + 3]}
  end
end

local add_tokens = 0
for _, m in ipairs(new) do add_tokens = add_tokens + m.tokens end
local need_msgs, need_tokens = 0, 0
if max_messages > 0 then need_msgs = count + #new - max_messages end
if max_tokens > 0 then need_tokens = tokens + add_tokens - max_tokens end

-- plan evictions: the oldest non-system messages, stored ones before new ones
local evicted_raws, evicted_ids, evicted_roles = {}, {}, {}
local removed_msgs, removed_tokens = 0, 0
local prefix_len = 0          -- stored messages [0, prefix_len) are rewritten
local prefix_system = {}      -- system messages seen in that prefix, {pos, raw}
local drop_new = {}
local function satisfied() return removed_msgs >= need_msgs and removed_tokens >= need_tokens end

local pos = 0
local chunk = 32
while pos < count and not satisfied() do
  local raws = redis.call('LRANGE', LIST, pos, pos + chunk - 1)
  if #raws == 0 then break end
  for _, raw in ipairs(raws) do
    if satisfied() then break end
    local t, id, role = msg_info(raw)
    if role == 'system' then
      prefix_system[#prefix_system + 1] = {pos, raw}
    else
      evicted_raws[#evicted_raws + 1] = raw
      evicted_roles[#evicted_roles + 1] = role or 'unknown'
      if id then evicted_ids[#evicted_ids + 1] = id end
      removed_msgs = removed_msgs + 1
      removed_tokens = removed_tokens + t
      prefix_len = pos + 1
    end
    pos = pos + 1
  end
  chunk = chunk * 2
end
local evicted_new_tokens = 0
for i, m in ipairs(new) do
  if satisfied() then break end
  if m.role ~= 'system' then
    drop_new[i] = true
    evicted_raws[#evicted_raws + 1] = m.raw
    removed_msgs = removed_msgs + 1
    removed_tokens = removed_tokens + m.tokens
    evicted_new_tokens = evicted_new_tokens + m.tokens
  end
end
if not satisfied() then
  return redis.error_reply('LIMIT_EXCEEDED the messages do not fit the memory limits even after evicting '
    .. 'every non-system message (system messages are never evicted)')
end

-- apply
if mode == 'replace' then
  redis.call('DEL', LIST, IDS, ACCESS)
  for _, f in ipairs(redis.call('HKEYS', META)) do
    if string.sub(f, 1, 5) == 'role:' then redis.call('HDEL', META, f) end
  end
end
if prefix_len > 0 then
  redis.call('LTRIM', LIST, prefix_len, -1)
  local back = {}
  for i = #prefix_system, 1, -1 do
    if prefix_system[i][1] < prefix_len then back[#back + 1] = prefix_system[i][2] end
  end
  push_all(LIST, back, true)
  for _, role in ipairs(evicted_roles) do redis.call('HINCRBY', META, 'role:' .. role, -1) end
end
local stored, stored_ids = {}, {}
local stored_tokens = 0
for i, m in ipairs(new) do
  if not drop_new[i] then
    stored[#stored + 1] = m.raw
    stored_ids[#stored_ids + 1] = m.id
    stored_tokens = stored_tokens + m.tokens
    redis.call('HINCRBY', META, 'role:' .. m.role, 1)
  end
end
push_all(LIST, stored, false)
local i = 1
while i <= #stored_ids do
  local j = math.min(i + 499, #stored_ids)
  redis.call('SADD', IDS, unpack(stored_ids, i, j))
  i = j + 1
end
archive(evicted_raws, archive_max)
forget_ids(evicted_ids)

local evicted_stored = removed_msgs - (#new - #stored)
local new_count = count - evicted_stored + #stored
local new_tokens = tokens - (removed_tokens - evicted_new_tokens) + stored_tokens
redis.call('HSET', META, 'message_count', new_count, 'token_count', new_tokens)
if removed_msgs > 0 then redis.call('HINCRBY', META, 'evicted_count', removed_msgs) end
expire_all(ttl_ms)
return {#new, new_count, new_tokens, removed_msgs, duplicates, removed_tokens}
