-- Shared helpers, prepended to every script by store.py.
-- KEYS: 1 messages list, 2 metadata hash, 3 archive list, 4 ids set, 5 access zset, 6 backups set.
local LIST, META, ARCHIVE, IDS, ACCESS, BACKUPS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

-- tokens, id and role of a stored message. Our own messages start with {"tokens":N,"id":"..","role":".."
-- and are read without decoding; anything else (e.g. written by Compozy) is decoded. tokens is nil when
-- the message carries no token count (foreign data); role is nil when undecodable.
local function msg_info(raw)
  local t, id, role = string.match(raw, '^{"tokens":(%d+),"id":"([^"\\]*)","role":"([^"\\]*)"')
  if t then return tonumber(t), id, role end
  local ok, m = pcall(cjson.decode, raw)
  if not ok or type(m) ~= 'table' then return 0, nil, nil end
  local tokens = tonumber(m['tokens'])
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
  local len = 0
  while i <= n do
    local j = math.min(i + 499, n)
    len = redis.call(cmd, key, unpack(items, i, j))
    i = j + 1
  end
  return len
end

local function clear_roles()
  for _, f in ipairs(redis.call('HKEYS', META)) do
    if string.sub(f, 1, 5) == 'role:' then redis.call('HDEL', META, f) end
  end
end

-- The counters of an instance written by this library, trusted only while our own length ('nb_count', a
-- field only our scripts write) equals the list's: a list written or extended by another tool (Compozy,
-- which increments message_count itself) is adopted first by the caller (FOREIGN_DATA), which counts the
-- tokens of its messages. An empty list starts afresh (ids of messages another tool deleted are dropped).
local function load_counters()
  local v = redis.call('HMGET', META, 'token_count', 'nb_count')
  local len = redis.call('LLEN', LIST)
  if len == 0 then  -- a fresh start: forget ids, access data and role counts of messages deleted elsewhere
    redis.call('DEL', IDS, ACCESS)
    clear_roles()
    return 0, 0
  end
  if tonumber(v[2]) == len then return len, tonumber(v[1]) or 0 end
  return nil, nil
end

local function foreign_error()
  return redis.error_reply('FOREIGN_DATA this memory was written by another tool and must be adopted first')
end

local function archive(raws, archive_max)
  if archive_max <= 0 or #raws == 0 then return end
  local len = push_all(ARCHIVE, raws, true)
  if len > archive_max then redis.call('LTRIM', ARCHIVE, 0, archive_max - 1) end
end

local function forget_ids(ids, track)
  local i = 1
  while i <= #ids do
    local j = math.min(i + 499, #ids)
    redis.call('SREM', IDS, unpack(ids, i, j))
    if track then redis.call('ZREM', ACCESS, unpack(ids, i, j)) end
    i = j + 1
  end
end

local function add_ids(ids)
  local i = 1
  while i <= #ids do
    local j = math.min(i + 499, #ids)
    redis.call('SADD', IDS, unpack(ids, i, j))
    i = j + 1
  end
end

-- apply role count changes: deltas = {role = n}
local function bump_roles(deltas)
  for role, n in pairs(deltas) do
    if n ~= 0 then redis.call('HINCRBY', META, 'role:' .. role, n) end
  end
end

local function expire_all(ttl_ms, track)
  if ttl_ms <= 0 then return end
  redis.call('PEXPIRE', LIST, ttl_ms)
  redis.call('PEXPIRE', META, ttl_ms)
  redis.call('PEXPIRE', ARCHIVE, ttl_ms)
  redis.call('PEXPIRE', IDS, ttl_ms)
  if track then redis.call('PEXPIRE', ACCESS, ttl_ms) end
end
