-- Marks a batch fully enqueued (JobStore.close_batch); finalizes it at once if all its jobs are done.
-- ARGV: prefix, batch_id, now
-- Returns 1 if this call queued the batch for finalizing, else 0.
local bid = ARGV[2]
local bk = K.batch(bid)
redis.call('HSET', bk, 'closed', '1')
local total = tonumber(redis.call('HGET', bk, 'total') or '0')
local done = tonumber(redis.call('HGET', bk, 'done') or '0')
if done >= total and redis.call('HSETNX', bk, 'finalizing', ARGV[3]) == 1 then
  redis.call('ZADD', K.finalize, ARGV[3], bid)
  return 1
end
return 0
