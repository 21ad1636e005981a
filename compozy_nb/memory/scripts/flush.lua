-- Remove the given stored messages (matched by their exact bytes, so messages appended since the caller
-- read the list survive), archive them, optionally put one summary message where the first one stood,
-- and update the counters. A message already gone (a racing flush) is simply not counted.
-- ARGV: ttl_ms, archive_max, now_iso, summary_raw ('' = none), summary_tokens, summary_id, n, raw...
-- Returns {removed, message_count, token_count, summary_written}.
local ttl_ms = tonumber(ARGV[1])
local archive_max = tonumber(ARGV[2])
local now_iso = ARGV[3]
local summary_raw = ARGV[4]
local summary_tokens = tonumber(ARGV[5])
local summary_id = ARGV[6]
local n = tonumber(ARGV[7])

load_counters()
local wanted = {}
for i = 8, 7 + n do wanted[ARGV[i]] = (wanted[ARGV[i]] or 0) + 1 end
local all = redis.call('LRANGE', LIST, 0, -1)
local kept, removed, removed_ids = {}, {}, {}
local removed_tokens = 0
local summary_written = 0
for _, raw in ipairs(all) do
  local c = wanted[raw]
  if c and c > 0 then
    wanted[raw] = c - 1
    local t, id, role = msg_info(raw)
    removed[#removed + 1] = raw
    removed_tokens = removed_tokens + t
    if id then removed_ids[#removed_ids + 1] = id end
    redis.call('HINCRBY', META, 'role:' .. (role or 'unknown'), -1)
    if summary_raw ~= '' and summary_written == 0 then
      kept[#kept + 1] = summary_raw
      summary_written = 1
    end
  else
    kept[#kept + 1] = raw
  end
end
local count = #kept
local tokens = tonumber(redis.call('HGET', META, 'token_count') or '0') - removed_tokens
if #removed > 0 then
  redis.call('DEL', LIST)
  push_all(LIST, kept, false)
  archive(removed, archive_max)
  forget_ids(removed_ids)
  if summary_written == 1 then
    tokens = tokens + summary_tokens
    redis.call('HINCRBY', META, 'role:system', 1)
    redis.call('SADD', IDS, summary_id)
    redis.call('HINCRBY', META, 'summary_count', 1)
  end
  redis.call('HSET', META, 'message_count', count, 'token_count', tokens, 'last_flush', now_iso)
  redis.call('HINCRBY', META, 'flush_count', 1)
  expire_all(ttl_ms)
end
return {#removed, count, tokens, summary_written}
