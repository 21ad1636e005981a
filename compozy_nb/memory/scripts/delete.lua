-- Delete every key of an instance: messages, metadata, archive, ids, access data, backups and operation log.
-- Returns {messages_deleted, keys_deleted}.
local count = redis.call('LLEN', LIST)
local deleted = 0
for _, key in ipairs(redis.call('SMEMBERS', BACKUPS)) do deleted = deleted + redis.call('DEL', key) end
deleted = deleted + redis.call('DEL', LIST, META, ARCHIVE, IDS, ACCESS, BACKUPS)
if LOG then redis.call('DEL', LOG) end  -- nothing of a deleted memory stays, not even the ids in its log
return {count, deleted}
