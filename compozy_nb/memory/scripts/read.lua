-- Reads that need Lua: the newest messages within a token budget (one round trip, work proportional to
-- the window, not the history) and reads that record access times (LRU strategies).
-- ARGV: mode, a, b, track_access, now_ms.
--   mode 'range':  a = offset, b = limit ('-1' = all)          -> the window, oldest first
--   mode 'last':   a = n                                        -> the newest n, oldest first
--   mode 'budget': a = max_tokens                               -> the newest whole tool-call groups that fit
--                  (a message and the tool run after it: all or nothing), oldest first
-- Returns {total, raw...}; FOREIGN_DATA error when a budget read meets messages without token counts.
local mode = ARGV[1]
local a = int_arg(ARGV[2], MAX_INT)
local b = ARGV[3] == '-1' and -1 or int_arg(ARGV[3], MAX_INT)
local track = ARGV[4] == '1'
local now_ms = int_arg(ARGV[5], MAX_INT)
if mode ~= 'range' and mode ~= 'last' and mode ~= 'budget' then return arg_error('mode') end
if not a then return arg_error('a') end
if not b then return arg_error('b') end
if ARGV[4] ~= '0' and ARGV[4] ~= '1' then return arg_error('track_access') end
if not now_ms then return arg_error('now_ms') end
local out
local total = redis.call('LLEN', LIST)
if mode == 'range' then
  local stop = -1
  if b >= 0 then stop = a + b - 1 end
  if b == 0 then out = {} else out = redis.call('LRANGE', LIST, a, stop) end
elseif mode == 'last' then
  if a <= 0 then out = {} else out = redis.call('LRANGE', LIST, -a, -1) end
else
  local picked = {}
  local used = 0
  local from = total
  -- first window sized from the average message size, so one LRANGE usually suffices
  local v = redis.call('HMGET', META, 'message_count', 'token_count')
  local avg = 0
  if tonumber(v[1]) and tonumber(v[1]) > 0 then avg = tonumber(v[2]) / tonumber(v[1]) end
  local chunk = 16
  if avg > 0 then chunk = math.floor(a / avg) + 4 end
  local done = false
  local group, group_tokens = {}, 0  -- a tool run waiting for the message it answers (whole groups only)
  while from > 0 and not done do
    local start = math.max(0, from - chunk)
    local raws = redis.call('LRANGE', LIST, start, from - 1)
    for i = #raws, 1, -1 do
      local t, _, role = msg_info(raws[i])
      if t == nil then return foreign_error() end
      group[#group + 1] = raws[i]
      group_tokens = group_tokens + t
      if role ~= 'tool' then
        if used + group_tokens > a then done = true; break end
        used = used + group_tokens
        for _, raw in ipairs(group) do picked[#picked + 1] = raw end
        group, group_tokens = {}, 0
      end
    end
    from = start
    chunk = chunk * 2
  end
  if not done and #group > 0 and used + group_tokens <= a then  -- a leading tool run is a group of its own
    for _, raw in ipairs(group) do picked[#picked + 1] = raw end
  end
  out = {}
  for i = #picked, 1, -1 do out[#out + 1] = picked[i] end
end
if track and #out > 0 then
  -- the access record, in chunks of CHUNK/2 (score, id) pairs
  local args = {}
  for _, raw in ipairs(out) do
    local _, id = msg_info(raw)
    if id then args[#args + 1] = ARGV[5]; args[#args + 1] = id end
  end
  if #args > 0 then
    chunked('ZADD', ACCESS, args)
    local pttl = redis.call('PTTL', LIST)
    if pttl > 0 then redis.call('PEXPIRE', ACCESS, pttl) end
  end
end
table.insert(out, 1, total)
return out
