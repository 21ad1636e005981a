-- Shared helpers, prepended to every script by store.py.
-- KEYS: 1 messages list, 2 metadata hash, 3 archive list, 4 ids set, 5 access zset, 6 backups set.
local LIST, META, ARCHIVE, IDS, ACCESS, BACKUPS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

-- tokens, id and role of a stored message. Our own messages start with {"tokens":N,"id":"..","role":".."
-- and are read without decoding; anything else (e.g. written by Compozy) is decoded; undecodable -> nil.
local function msg_info(raw)
  local t, id, role = string.match(raw, '^{"tokens":(%d+),"id":"([^"\\]*)","role":"([^"\\]*)"')
  if t then return tonumber(t), id, role end
  local ok, m = pcall(cjson.decode, raw)
  if not ok or type(m) ~= 'table' then return 0, nil, nil end
  local tokens = tonumber(m['tokens']) or 0
  local mid = m['id']
  if type(mid) ~= 'string' then mid = nil end
  local r = m['role']
  if type(r) ~= 'string' then r = nil end
  return tokens, mid, r
end

local function push_all(key, items, from_left)
  local cmd = from_left and 'LPUSH' or 'RPUSH'
  local n = #items
  local i = 1
  while i <= n do
    local j = math.min(i + 499, n)
    redis.call(cmd, key, unpack(items, i, j))
    i = j + 1
  end
end

-- Counters in the metadata hash; rebuilt from the list when missing (a list written by another tool).
local function load_counters()
  local v = redis.call('HMGET', META, 'message_count', 'token_count')
  local count, tokens = tonumber(v[1]), tonumber(v[2])
  local len = redis.call('LLEN', LIST)
  if count ~= nil and count == len then return count, tokens or 0 end
  -- repair: recount everything from the list itself
  local fields = redis.call('HKEYS', META)
  for _, f in ipairs(fields) do
    if string.sub(f, 1, 5) == 'role:' then redis.call('HDEL', META, f) end
  end
  tokens = 0
  local raws = redis.call('LRANGE', LIST, 0, -1)
  for _, raw in ipairs(raws) do
    local t, _, role = msg_info(raw)
    tokens = tokens + t
    redis.call('HINCRBY', META, 'role:' .. (role or 'unknown'), 1)
  end
  redis.call('HSET', META, 'message_count', len, 'token_count', tokens)
  return len, tokens
end

local function archive(raws, archive_max)
  if archive_max <= 0 or #raws == 0 then return end
  push_all(ARCHIVE, raws, true)
  redis.call('LTRIM', ARCHIVE, 0, archive_max - 1)
end

local function forget_ids(ids)
  if #ids == 0 then return end
  local i = 1
  while i <= #ids do
    local j = math.min(i + 499, #ids)
    redis.call('SREM', IDS, unpack(ids, i, j))
    redis.call('ZREM', ACCESS, unpack(ids, i, j))
    i = j + 1
  end
end

local function expire_all(ttl_ms)
  if ttl_ms <= 0 then return end
  for i = 1, 5 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
