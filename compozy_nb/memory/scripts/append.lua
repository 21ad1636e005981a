-- Append (or, in mode 'replace', write) messages with exact token accounting, id de-duplication,
-- limit enforcement (evicting the oldest non-system messages into the archive) and TTL, atomically.
-- ARGV: mode, ttl_ms, max_messages, max_tokens, archive_max, track_access, n, explicit (one '0'/'1' per message:
-- whether the caller gave the id, so it may already be stored), then n x (raw, tokens, id, role).
-- Returns {accepted, message_count, token_count, evicted, duplicates, evicted_tokens}.
-- Nothing is written when the result cannot fit the limits (error LIMIT_EXCEEDED).
local mode = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local max_messages = tonumber(ARGV[3])
local max_tokens = tonumber(ARGV[4])
local archive_max = tonumber(ARGV[5])
local track = ARGV[6] == '1'
local n = tonumber(ARGV[7])
local explicit = ARGV[8]
local FIRST = 9

local count, tokens = 0, 0
if mode ~= 'replace' then
  count, tokens = load_counters()
  if count == nil then return foreign_error() end
end

-- new messages, without duplicates (ids already stored, or repeated within this batch)
local new = {}
local seen = {}
local duplicates = 0
local stored = {}
if mode ~= 'replace' and count > 0 and string.find(explicit, '1', 1, true) then
  -- only ids the caller gave can already be stored (generated ids are fresh random 128-bit values)
  local ids, at = {}, {}
  for i = 0, n - 1 do
    if string.byte(explicit, i + 1) == 49 then
      ids[#ids + 1] = ARGV[FIRST + i * 4 + 2]
      at[#ids] = i
    end
  end
  local flags = redis.call('SMISMEMBER', IDS, unpack(ids))
  for j, flag in ipairs(flags) do if flag == 1 then stored[at[j]] = true end end
end
for i = 0, n - 1 do
  local base = FIRST + i * 4
  local id = ARGV[base + 2]
  if seen[id] or stored[i] then
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

-- plan evictions: the oldest non-system messages, stored ones before new ones; the newest non-system
-- message of the batch is never evicted (it is what the caller asked to store)
local evicted_raws, evicted_ids = {}, {}
local roles = {}
local removed_msgs, removed_tokens = 0, 0
local prefix_len = 0          -- stored messages [0, prefix_len) are rewritten
local prefix_system = {}      -- system messages seen in that prefix, {pos, raw}
local drop_new = {}
local function satisfied() return removed_msgs >= need_msgs and removed_tokens >= need_tokens end

-- whole tool-call groups: a message and the tool run after it go together; a group led by a system message is
-- kept whole, a leading tool run (its call removed elsewhere) is a group of its own
local pos = 0
local chunk = 8
if need_msgs > 0 then chunk = need_msgs + 4 end
local group_mode = nil        -- 'evict' or 'keep': what happens to the group being scanned
local stop = false
while pos < count and not stop do
  local raws = redis.call('LRANGE', LIST, pos, pos + chunk - 1)
  if #raws == 0 then break end
  for _, raw in ipairs(raws) do
    local t, id, role = msg_info(raw)
    if role ~= 'tool' or group_mode == nil then  -- a group starts here
      if satisfied() then stop = true; break end
      if role == 'system' then group_mode = 'keep' else group_mode = 'evict' end
    end
    if group_mode == 'keep' then
      prefix_system[#prefix_system + 1] = {pos, raw}
    else
      role = role or 'unknown'
      evicted_raws[#evicted_raws + 1] = raw
      roles[role] = (roles[role] or 0) - 1
      if id then evicted_ids[#evicted_ids + 1] = id end
      removed_msgs = removed_msgs + 1
      removed_tokens = removed_tokens + (t or 0)
      prefix_len = pos + 1
    end
    pos = pos + 1
  end
  chunk = chunk * 4
end
local last_plain = 0
for i, m in ipairs(new) do if m.role ~= 'system' then last_plain = i end end
local evicted_new_tokens = 0
local function drop(i)
  drop_new[i] = true
  evicted_raws[#evicted_raws + 1] = new[i].raw
  removed_msgs = removed_msgs + 1
  removed_tokens = removed_tokens + new[i].tokens
  evicted_new_tokens = evicted_new_tokens + new[i].tokens
end
-- the batch's leading tool run belongs to the last stored group: it goes when that group went (or when it has none)
local i = 1
while i <= #new and new[i].role == 'tool' do i = i + 1 end
local orphan = pos >= count and group_mode ~= 'keep' and i > 1  -- the stored group it answers is gone (or none)
if orphan and (count > 0 or (not satisfied() and last_plain >= i)) then
  for k = 1, i - 1 do drop(k) end
end
while i <= #new and not satisfied() do
  local j = i
  while j + 1 <= #new and new[j + 1].role == 'tool' do j = j + 1 end
  if last_plain >= i and last_plain <= j then break end  -- the caller's newest message: never evicted
  if new[i].role ~= 'system' then
    for k = i, j do drop(k) end
  end
  i = j + 1
end
if not satisfied() then
  return redis.error_reply('LIMIT_EXCEEDED the messages do not fit the memory limits even after evicting '
    .. 'every older non-system message (system messages are never evicted)')
end

-- apply
if mode == 'replace' then
  redis.call('DEL', LIST, IDS, ACCESS)
  clear_roles()
end
if prefix_len > 0 then
  redis.call('LTRIM', LIST, prefix_len, -1)
  local back = {}
  for i = #prefix_system, 1, -1 do
    if prefix_system[i][1] < prefix_len then back[#back + 1] = prefix_system[i][2] end
  end
  push_all(LIST, back, true)
end
local kept, stored_ids = {}, {}
local stored_tokens = 0
for i, m in ipairs(new) do
  if not drop_new[i] then
    kept[#kept + 1] = m.raw
    stored_ids[#stored_ids + 1] = m.id
    stored_tokens = stored_tokens + m.tokens
    roles[m.role] = (roles[m.role] or 0) + 1
  end
end
push_all(LIST, kept, false)
add_ids(stored_ids)
archive(evicted_raws, archive_max)
forget_ids(evicted_ids, track)
bump_roles(roles)

local evicted_stored = removed_msgs - (#new - #kept)
local new_count = count - evicted_stored + #kept
local new_tokens = tokens - (removed_tokens - evicted_new_tokens) + stored_tokens
redis.call('HSET', META, 'message_count', new_count, 'token_count', new_tokens, 'nb_count', new_count)
if removed_msgs > 0 then redis.call('HINCRBY', META, 'evicted_count', removed_msgs) end
expire_all(ttl_ms, track)
return {#new, new_count, new_tokens, removed_msgs, duplicates, removed_tokens}
