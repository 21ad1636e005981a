-- Clear the messages of an instance, optionally keeping them in a backup list first.
-- ARGV: backup_key ('' = no backup; else LIST .. ':backup:' .. a stamp unique to the call), ttl_ms.
-- The archive, earlier backups and the operation log are kept. A re-send of a call that already made its backup (its reply
-- was lost, the client retried) finds that backup and returns the same result, clearing nothing again.
-- Returns {messages_cleared, backup_created}.
local backup_key = ARGV[1]
local ttl_ms = int_arg(ARGV[2], MAX_TTL_MS)
local prefix = LIST .. ':backup:'
if backup_key ~= '' and (string.sub(backup_key, 1, #prefix) ~= prefix or #backup_key == #prefix) then
  return arg_error('backup_key')
end
if not ttl_ms then return arg_error('ttl_ms') end
if backup_key ~= '' and redis.call('EXISTS', backup_key) == 1 then
  return {redis.call('LLEN', backup_key), 1}
end
local count = redis.call('LLEN', LIST)
local backed_up = 0
if backup_key ~= '' and count > 0 then
  redis.call('RENAME', LIST, backup_key)
  redis.call('SADD', BACKUPS, backup_key)
  if ttl_ms > 0 then
    redis.call('PEXPIRE', backup_key, ttl_ms)
    redis.call('PEXPIRE', BACKUPS, ttl_ms)
  end
  backed_up = 1
end
redis.call('DEL', LIST, META, IDS, ACCESS)
log_event({cleared = count, backup_key = backed_up == 1 and backup_key or nil, messages = 0, tokens = 0})
return {count, backed_up}
