-- Shared helpers, prepended to every script by store.py.
-- KEYS: 1 messages list, 2 metadata hash, 3 archive list, 4 ids set, 5 access zset, 6 backups set, 7 log stream
-- (read.lua is sent the first five, stats.lua the first two: store.py SCRIPT_KEYS).
-- Every script checks all of its arguments before its first write, and writes nothing when a check fails.
local LIST, META, ARCHIVE, IDS, ACCESS, BACKUPS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local MAX_INT = 9007199254740991   -- 2^53 - 1: exact in Lua numbers, JSON and Redis replies
local MAX_TTL_MS = 3153600000000   -- 100 years, as config/durations.py MAX_DURATION_SECONDS
local CHUNK = 500                  -- values per variadic command (Lua's unpack() fails above ~8,000)

-- int_arg for a value a pattern already matched as digits: only the bound is left to check (a run of digits
-- too long for exactness reads as a number above any bound).
local function digits_arg(digits, hi)
  local v = tonumber(digits)
  if v and v <= hi then return v end
  return nil
end

-- A non-negative integer argument within [0, hi], or nil. Refuses '1e+17', '.5', '-1', 'nan' and friends
-- (numbers Lua would print in exponent form, which PEXPIRE and friends refuse after earlier writes).
local function int_arg(value, hi)
  if type(value) ~= 'string' or #value > 16 or not string.match(value, '^%d+$') then return nil end
  return digits_arg(value, hi)
end

local function arg_error(name)
  return redis.error_reply('INVALID_ARGUMENT script argument ' .. name .. ' is not valid (nothing was written)')
end

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

-- one command per CHUNK values: redis.call(cmd, key, values[i..j]) for every chunk; returns the last reply
local function chunked(cmd, key, values)
  local n = #values
  local i = 1
  local reply = 0
  while i <= n do
    local j = math.min(i + CHUNK - 1, n)
    reply = redis.call(cmd, key, unpack(values, i, j))
    i = j + 1
  end
  return reply
end

local function push_all(key, items, from_left)
  return chunked(from_left and 'LPUSH' or 'RPUSH', key, items)
end

local function clear_roles()
  for _, f in ipairs(redis.call('HKEYS', META)) do
    if string.sub(f, 1, 5) == 'role:' then redis.call('HDEL', META, f) end
  end
end

-- The id at the tail of the list ('' for an element without one, e.g. written by Compozy).
local function tail_id()
  local raw = redis.call('LINDEX', LIST, -1)
  if not raw then return '' end
  local _, id = msg_info(raw)
  return id or ''
end

-- The counters of an instance written by this library, trusted only while its fingerprint holds: our own
-- length and token total ('nb_count', 'nb_tokens', fields only our scripts write) equal the list's length
-- and Compozy's 'message_count'/'token_count', and the id at the list's tail is the one our last write left
-- there ('nb_last'). Compozy's elements carry no id and every Compozy write either pushes at the tail (append,
-- write) or shortens the list (flush, trim), so it changes the tail or a count, even when the list keeps its
-- length. (The head is not checked: no Compozy write changes it alone.) A foreign list is adopted first by the
-- caller (FOREIGN_DATA), which counts the tokens of its messages.
-- Retries: each write call carries an operation id (op) chosen before its first send. A re-send of a call
-- that already ran (its reply was lost, the client retried) finds the id and the result recorded with it.
-- The last OPS_KEPT_BYTES of calls are kept ('nb_ops': "\n<op>\t<result json>" entries, newest last), so
-- calls sent together (a pipeline, concurrent clients) and re-sent together each answer as they first did.
-- Returns count, tokens, fresh, replayed: fresh for an empty list (whose stale ids, access data and role counts
-- the caller drops with its first write); replayed is the recorded result of a re-sent call; count is nil when
-- the list is foreign. Writes nothing.
local OPS_KEPT_BYTES = 384  -- about 9 appends: a pipeline or burst of writes to one memory, re-sent together

-- The result recorded for operation id op in the 'nb_ops' value ops (nil: not there).
local function recorded(ops, op)
  if not ops or not op or op == '' then return nil end
  local at = string.find(ops, '\n' .. op .. '\t', 1, true)
  if not at then return nil end
  local from = at + #op + 2
  local to = string.find(ops, '\n', from, true)
  return cjson.decode(string.sub(ops, from, to and to - 1 or -1))
end

-- A result (integers) as the JSON array recorded for it: one string.format, where cjson.encode costs a microsecond
-- more on every write. '%d' prints every integer up to MAX_INT exactly (no exponent form).
local INT_LISTS = {[2] = '[%d,%d]', [4] = '[%d,%d,%d,%d]', [6] = '[%d,%d,%d,%d,%d,%d]'}
local function int_list(values)
  local format = INT_LISTS[#values]
  if format then return string.format(format, unpack(values)) end
  return cjson.encode(values)
end

local OPS = nil  -- the 'nb_ops' value once read by load_counters or replayed (false: none), for save_counters
-- the event counters a script adds to ('evicted_count', 'flush_count', 'summary_count'), as load_counters read them
-- (a missing or garbled value counts as 0), so a write sets them in its HSET: an HINCRBY on a value another tool
-- garbled would fail after the write's other commands
local TALLY = nil

local function load_tallies(names, values, first)
  TALLY = {}
  for i, name in ipairs(names) do TALLY[name] = int_arg(values[first + i - 1], MAX_INT) or 0 end
end

-- tallies: the names of the event counters the script may add to (read with the counters)
local function load_counters(op, tallies)
  local v = redis.call('HMGET', META, 'token_count', 'message_count', 'nb_count', 'nb_tokens', 'nb_last', 'nb_ops',
    unpack(tallies))
  OPS = v[6]
  load_tallies(tallies, v, 7)
  local previous = recorded(OPS, op)
  if previous then return 0, 0, false, previous end
  local len = redis.call('LLEN', LIST)
  if len == 0 then return 0, 0, true end
  if tonumber(v[3]) ~= len or v[2] ~= v[3] or not v[1] or v[1] ~= v[4] then return nil end
  if tail_id() ~= v[5] then return nil end
  return len, tonumber(v[1]) or 0, false, nil
end

-- The recorded result of a re-sent call (see load_counters), for scripts that do not load the counters.
local function replayed(op, tallies)
  if op == '' then return nil end
  local v = redis.call('HMGET', META, 'nb_ops', unpack(tallies))
  OPS = v[1]
  load_tallies(tallies, v, 2)
  return recorded(OPS, op)
end

-- Drop what an empty list left behind (ids, access data, role counts of messages deleted elsewhere).
local function forget_all()
  redis.call('DEL', IDS, ACCESS)
  clear_roles()
end

-- Record the counters and the fingerprint (see load_counters) after a write, and the call's result under
-- its operation id; returns the result. last: the id now at the tail when the caller knows it (nil: read it);
-- tallies: {name = n} added to the event counters (in the same HSET when load_counters read them).
local function save_counters(count, tokens, op, result, last, tallies)
  local fields = {'message_count', count, 'token_count', tokens, 'nb_count', count, 'nb_tokens', tokens,
    'nb_last', last or tail_id()}
  for name, n in pairs(tallies or {}) do
    if n > 0 and TALLY and TALLY[name] then
      fields[#fields + 1] = name
      fields[#fields + 1] = TALLY[name] + n
    elseif n > 0 then
      redis.call('HINCRBY', META, name, n)
    end
  end
  if op and op ~= '' then
    if OPS == nil then OPS = redis.call('HGET', META, 'nb_ops') end  -- not read yet (no script writes it between)
    local ops = (OPS or '') .. '\n' .. op .. '\t' .. int_list(result)
    if #ops > OPS_KEPT_BYTES then  -- drop the oldest entries, whole: keep from the first entry that fits
      local at = string.find(ops, '\n', #ops - OPS_KEPT_BYTES + 1, true)
      ops = at and string.sub(ops, at) or ''
    end
    fields[#fields + 1] = 'nb_ops'
    fields[#fields + 1] = ops
  end
  redis.call('HSET', META, unpack(fields))
  return result
end

local function foreign_error()
  return redis.error_reply('FOREIGN_DATA this memory was written by another tool and must be adopted first')
end

-- Returns true when the archive was created by this call (it needs its TTL).
local function archive(raws, archive_max)
  if archive_max <= 0 or #raws == 0 then return false end
  local len = push_all(ARCHIVE, raws, true)
  if len > archive_max then redis.call('LTRIM', ARCHIVE, 0, archive_max - 1) end
  return len == #raws
end

local function forget_ids(ids, track)
  chunked('SREM', IDS, ids)
  if track then chunked('ZREM', ACCESS, ids) end
end

local function add_ids(ids)
  chunked('SADD', IDS, ids)
end

-- apply role count changes: deltas = {role = n}
local function bump_roles(deltas)
  for role, n in pairs(deltas) do
    if n ~= 0 then redis.call('HINCRBY', META, 'role:' .. role, n) end
  end
end

-- An append refreshes the TTL only once more than ttl_slack() of it has run (1 % of the TTL, at most a minute): a
-- busy memory re-expires its keys about once a minute instead of on every message, and still expires between
-- TTL - 1 min and TTL after its last write. (Compozy re-expires when less than half the TTL is left.)
local function ttl_slack(ttl_ms)
  return math.min(math.floor(ttl_ms / 100), 60000)
end

local function expire_all(ttl_ms, track)
  if ttl_ms <= 0 then return end
  redis.call('PEXPIRE', LIST, ttl_ms)
  redis.call('PEXPIRE', META, ttl_ms)
  redis.call('PEXPIRE', ARCHIVE, ttl_ms)
  redis.call('PEXPIRE', IDS, ttl_ms)
  if track then redis.call('PEXPIRE', ACCESS, ttl_ms) end
end

-- The operation log (memory/log.py): the caller adds one last argument, taken off ARGV here so every script
-- sees only its own arguments: '_log:0' (off) or '_log:1' then, tab-separated, the cap, the TTL in ms, the
-- operation, its source, the flush strategy ('' if none) and the redacted span count ('' or 0 if none). A
-- delimited string, not JSON: decoding it runs in every write script. KEYS[7] is the capped stream next to the
-- memory. log_event(fields) adds one entry in the same script as the change it describes: lists are JSON
-- arrays, numbers integers; an absent or invalid log argument logs nothing.
local LOG = KEYS[7]
local LOG_CFG = nil
if LOG and string.sub(ARGV[#ARGV] or '', 1, 5) == '_log:' then
  local max, ttl, lop, source, strategy, redacted = string.match(table.remove(ARGV),
    '^_log:1\t(%d+)\t(%d+)\t([%w_]+)\t([%w_]+)\t([%w_]*)\t(%d*)$')
  max, ttl = int_arg(max, MAX_INT), int_arg(ttl, MAX_TTL_MS)
  if max and ttl and max >= 1 then
    LOG_CFG = {max = max, ttl = ttl, op = lop, source = source}
    if strategy ~= '' then LOG_CFG['strategy'] = strategy end
    local spans = int_arg(redacted, MAX_INT)
    if spans and spans > 0 then LOG_CFG['redacted'] = spans end
  end
end

local function log_value(value)
  if type(value) == 'table' then
    if #value == 0 then return '[]' end
    return cjson.encode(value)
  end
  if type(value) == 'number' then return string.format('%d', value) end
  return tostring(value)
end

local function log_event(fields)
  if not LOG_CFG then return end
  local args = {'XADD', LOG, 'MAXLEN', log_value(LOG_CFG['max']), '*', 'op', LOG_CFG['op'], 'source', LOG_CFG['source']}
  for _, name in ipairs({'strategy', 'redacted'}) do
    if LOG_CFG[name] ~= nil then
      args[#args + 1] = name
      args[#args + 1] = log_value(LOG_CFG[name])
    end
  end
  for name, value in pairs(fields) do
    args[#args + 1] = name
    args[#args + 1] = log_value(value)
  end
  redis.call(unpack(args))
  if LOG_CFG['ttl'] > 0 then redis.call('PEXPIRE', LOG, LOG_CFG['ttl']) end
end
