-- Remove the given stored messages (matched by their exact bytes, so messages appended since the caller
-- read the list survive), archive them, optionally put one summary message where the first one stood,
-- and update the counters. Without a summary, a message already gone (a racing flush) is not counted.
-- With a summary, the plan is applied only if every planned message is still there (else nothing
-- changes and summary_written is -1: the caller re-plans), so a summary never covers a message twice.
-- Tool messages right after a removed message go with it (whole tool-call groups: the plan has them, this also
-- covers tool results appended since the plan was made).
-- ARGV: op, ttl_ms, archive_max, now_iso, summary_raw ('' = none), summary_tokens, summary_id, track, n, raw...
-- op: the call's operation id (a re-send of a call that ran returns its recorded result, writing nothing).
-- Returns {removed, message_count, token_count, summary_written}.
local op = ARGV[1]
local ttl_ms = int_arg(ARGV[2], MAX_TTL_MS)
local archive_max = int_arg(ARGV[3], MAX_INT)
local now_iso = ARGV[4]
local summary_raw = ARGV[5]
local summary_tokens = int_arg(ARGV[6], MAX_INT)
local summary_id = ARGV[7]
local track = ARGV[8] == '1'
local n = int_arg(ARGV[9], MAX_INT)
local FIRST = 10
if not ttl_ms then return arg_error('ttl_ms') end
if not archive_max then return arg_error('archive_max') end
if type(now_iso) ~= 'string' or now_iso == '' then return arg_error('now_iso') end
if not summary_tokens then return arg_error('summary_tokens') end
if summary_raw ~= '' and summary_id == '' then return arg_error('summary_id') end
if ARGV[8] ~= '0' and ARGV[8] ~= '1' then return arg_error('track_access') end
if not n or #ARGV ~= FIRST - 1 + n then return arg_error('n') end

local count, tokens, _, previous = load_counters(op, {'flush_count', 'summary_count'})
if count == nil then return foreign_error() end
if previous then return previous end
local wanted = {}
for i = FIRST, FIRST + n - 1 do wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + 1 end
local all = redis.call('LRANGE', LIST, 0, -1)
local kept, removed, removed_ids = {}, {}, {}
local roles = {}
local removed_tokens = 0
local summary_written = 0
local extra = 0           -- tool messages removed with the message they answer (appended after the plan was made)
local in_removed = false
for _, raw in ipairs(all) do
  local c = wanted[raw]
  local follows = false
  if not (c and c > 0) and in_removed then
    local _, _, r = msg_info(raw)
    follows = r == 'tool'
  end
  if (c and c > 0) or follows then
    if c and c > 0 then wanted[raw] = c - 1 else extra = extra + 1 end
    in_removed = true
    local t, id, role = msg_info(raw)
    role = role or 'unknown'
    removed[#removed + 1] = raw
    removed_tokens = removed_tokens + (t or 0)
    roles[role] = (roles[role] or 0) - 1
    if id then removed_ids[#removed_ids + 1] = id end
    if summary_raw ~= '' and summary_written == 0 then
      kept[#kept + 1] = summary_raw
      summary_written = 1
    end
  else
    kept[#kept + 1] = raw
    in_removed = false
  end
end
if summary_raw ~= '' and (#removed - extra < n or extra > 0) then  -- the summary would not cover them: re-plan
  return {0, count, tokens, -1}
end
if #removed == 0 then return {0, count, tokens, 0} end
count = #kept
tokens = tokens - removed_tokens
redis.call('DEL', LIST)
push_all(LIST, kept, false)
archive(removed, archive_max)
forget_ids(removed_ids, track)
if summary_written == 1 then
  tokens = tokens + summary_tokens
  roles['system'] = (roles['system'] or 0) + 1
  redis.call('SADD', IDS, summary_id)
end
bump_roles(roles)
local result = save_counters(count, tokens, op, {#removed, count, tokens, summary_written}, nil,
  {flush_count = 1, summary_count = summary_written})
redis.call('HSET', META, 'last_flush', now_iso)
expire_all(ttl_ms, track)
log_event({flushed = #removed, flushed_ids = removed_ids, summary_id = summary_written == 1 and summary_id or nil,
  messages = count, tokens = tokens})
return result
