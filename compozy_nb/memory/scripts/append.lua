-- Append (or, in mode 'replace', write) messages with exact token accounting, id de-duplication,
-- limit enforcement (evicting the oldest non-system messages into the archive) and TTL, atomically.
-- ARGV: op, config, n, then n x (raw, tokens, id, role); config is "<mode>\t<ttl_ms>\t<max_messages>\t<max_tokens>\t
-- <archive_max>\t<track_access 0/1>" (one argument: the same for every call of an instance, encoded once).
-- op: the call's operation id (a re-send of a call that ran returns its recorded result, writing nothing).
-- Every message id is assigned by the caller before the first send: an id already stored (a retried or
-- repeated append) or repeated within the batch is skipped and counted in duplicates.
-- Returns {accepted, message_count, token_count, evicted, duplicates, evicted_tokens}.
-- Nothing is written when an argument is invalid or the result cannot fit the limits (LIMIT_EXCEEDED).
local op = ARGV[1]
local mode, ttl_s, max_messages_s, max_tokens_s, archive_max_s, track_s =
  string.match(ARGV[2], '^(%l+)\t(%d+)\t(%d+)\t(%d+)\t(%d+)\t([01])$')
if mode ~= 'append' and mode ~= 'replace' then return arg_error('config (mode and limits)') end
local ttl_ms = digits_arg(ttl_s, MAX_TTL_MS)
local max_messages = digits_arg(max_messages_s, MAX_INT)
local max_tokens = digits_arg(max_tokens_s, MAX_INT)
local archive_max = digits_arg(archive_max_s, MAX_INT)
local track = track_s == '1'
local n = int_arg(ARGV[3], MAX_INT)
local FIRST = 4
if not ttl_ms then return arg_error('ttl_ms') end
if not max_messages then return arg_error('max_messages') end
if not max_tokens then return arg_error('max_tokens') end
if not archive_max then return arg_error('archive_max') end
if not n or #ARGV ~= FIRST - 1 + n * 4 then return arg_error('n') end

local count, tokens, fresh, previous = 0, 0, true, nil
if mode == 'replace' then
  previous = replayed(op, {'evicted_count'})
else
  count, tokens, fresh, previous = load_counters(op, {'evicted_count'})
  if count == nil then return foreign_error() end
end
if previous then return previous end

-- the batch, checked whole before anything is written
local batch = {}
for i = 0, n - 1 do
  local base = FIRST + i * 4
  local t = int_arg(ARGV[base + 1], MAX_INT)
  if not t then return arg_error('tokens of message ' .. i) end
  if ARGV[base + 2] == '' then return arg_error('id of message ' .. i) end
  if ARGV[base + 3] == '' then return arg_error('role of message ' .. i) end
  batch[#batch + 1] = {raw = ARGV[base], tokens = t, id = ARGV[base + 2], role = ARGV[base + 3]}
end

-- new messages, without duplicates (ids already stored, or repeated within this batch)
local stored = {}
if count > 0 and n == 1 then  -- the usual append: one message
  if redis.call('SISMEMBER', IDS, batch[1].id) == 1 then stored[1] = true end
elseif count > 0 and n > 0 then
  local ids = {}
  for i, m in ipairs(batch) do ids[i] = m.id end
  local i = 1
  while i <= n do
    local j = math.min(i + CHUNK - 1, n)
    local flags = redis.call('SMISMEMBER', IDS, unpack(ids, i, j))
    for k, flag in ipairs(flags) do if flag == 1 then stored[i + k - 1] = true end end
    i = j + 1
  end
end
local new = {}
local seen = {}
local duplicates = 0
for i, m in ipairs(batch) do
  if seen[m.id] or stored[i] then
    duplicates = duplicates + 1
  else
    seen[m.id] = true
    new[#new + 1] = m
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
if need_msgs > 0 then chunk = need_msgs + 1 end  -- the usual eviction: one message, and the next one's role
local group_mode = nil        -- 'evict' or 'keep': what happens to the group being scanned
local stop = satisfied()  -- under the limits: nothing to read
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

-- the TTL left, read before the writes: an append within ttl_slack() of the last refresh leaves it
local refresh = ttl_ms > 0
local pttl = 0
if refresh and mode ~= 'replace' and not fresh and prefix_len < count then  -- (a list emptied here is re-created)
  pttl = redis.call('PTTL', LIST)
  refresh = pttl < ttl_ms - ttl_slack(ttl_ms) or pttl > ttl_ms  -- (or the TTL was shortened since)
end

-- apply (every check is above: nothing was written so far)
if mode == 'replace' then
  redis.call('DEL', LIST, IDS, ACCESS)
  clear_roles()
elseif fresh then
  forget_all()
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
local archive_created = archive(evicted_raws, archive_max)
forget_ids(evicted_ids, track)
bump_roles(roles)

local evicted_stored = removed_msgs - (#new - #kept)
local new_count = count - evicted_stored + #kept
local new_tokens = tokens - (removed_tokens - evicted_new_tokens) + stored_tokens
-- the tail's id, known without reading it back after an append (its elements carry the ids given with them; a
-- restored element may not, so replace reads it back)
local last = nil
if mode ~= 'replace' then last = stored_ids[#stored_ids] end
local result = save_counters(new_count, new_tokens, op,
  {#new, new_count, new_tokens, removed_msgs, duplicates, removed_tokens}, last, {evicted_count = removed_msgs})
if refresh then
  expire_all(ttl_ms, track)
elseif pttl > 0 then  -- every key gets the list's TTL: the ids set (it may have been evicted by maxmemory and
  -- re-created by SADD), and the archive when this call created it; the metadata exists (it matched the fingerprint)
  redis.call('PEXPIRE', IDS, pttl)
  if archive_created then redis.call('PEXPIRE', ARCHIVE, pttl) end
end
for i, m in ipairs(new) do if drop_new[i] then evicted_ids[#evicted_ids + 1] = m.id end end
log_event({appended = #kept, ids = stored_ids, evicted = removed_msgs, evicted_ids = evicted_ids,
  duplicates = duplicates, messages = new_count, tokens = new_tokens})
return result
