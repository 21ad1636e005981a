-- Clear the messages of an instance, optionally keeping them in a backup list first.
-- ARGV: backup_key ('' = no backup), ttl_ms. The archive and earlier backups are kept.
-- Returns {messages_cleared, backup_created}.
local backup_key = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
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
return {count, backed_up}
