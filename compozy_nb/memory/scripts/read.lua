-- Read messages in one round trip. ARGV: mode, a, b, track_access, now_ms.
--   mode 'range':  a = offset, b = limit (-1 = all)            -> the window, oldest first
--   mode 'last':   a = n                                        -> the newest n, oldest first
--   mode 'budget': a = max_tokens                               -> the newest messages that fit, oldest first
--   mode 'archive': a = offset, b = limit                       -> the archive, newest first
-- Returns {total, raw...}.
local mode = ARGV[1]
local a, b = tonumber(ARGV[2]), tonumber(ARGV[3])
local track = ARGV[4] == '1'
local now_ms = ARGV[5]
local out
local total
if mode == 'archive' then
  total = redis.call('LLEN', ARCHIVE)
  local stop = -1
  if b >= 0 then stop = a + b - 1 end
  out = redis.call('LRANGE', ARCHIVE, a, stop)
  table.insert(out, 1, total)
  return out
end
total = redis.call('LLEN', LIST)
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
  local chunk = 16
  local done = false
  while from > 0 and not done do
    local start = math.max(0, from - chunk)
    local raws = redis.call('LRANGE', LIST, start, from - 1)
    for i = #raws, 1, -1 do
      local t = msg_info(raws[i])
      if used + t > a then done = true; break end
      used = used + t
      picked[#picked + 1] = raws[i]
    end
    from = start
    chunk = chunk * 2
  end
  out = {}
  for i = #picked, 1, -1 do out[#out + 1] = picked[i] end
end
if track and #out > 0 then
  local args = {}
  for _, raw in ipairs(out) do
    local _, id = msg_info(raw)
    if id then args[#args + 1] = now_ms; args[#args + 1] = id end
  end
  if #args > 0 then
    redis.call('ZADD', ACCESS, unpack(args))
    local pttl = redis.call('PTTL', LIST)
    if pttl > 0 then redis.call('PEXPIRE', ACCESS, pttl) end
  end
end
table.insert(out, 1, total)
return out
