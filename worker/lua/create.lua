-- Creates a job unless its idempotency key is already taken (JobStore.create).
-- A key held by a job that ended failed or cancelled (or in a state listed in `replaceable`) is not
-- taken: the same line submitted again makes a new job, and the key then names the new one.
-- ARGV: prefix, job_id, batch_id, idem_key, idem_ttl, provider, lane, nfields, f1, v1, ...,
--       replaceable (csv of states), custom_id ('' for none)
-- Returns {1, job_id} or {0, existing job id}.
--@include fair.lua
local jid, bid, idem = ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[8])
local replaceable = ARGV[9 + 2 * n] or 'failed,cancelled'
local cid = ARGV[10 + 2 * n] or ''
local ik = K.idem(idem)
local existing = redis.call('GET', ik)
if existing then
  local state = redis.call('HGET', K.job(existing), 'state')
  if state then
    local free = false
    for s in string.gmatch(replaceable, '[^,]+') do if s == state then free = true end end
    if not free then return {0, existing} end
  end
end
redis.call('SET', ik, jid, 'EX', tonumber(ARGV[5]))
local jk = K.job(jid)
for i = 0, n - 1 do redis.call('HSET', jk, ARGV[9 + 2 * i], ARGV[10 + 2 * i]) end
local now = redis.call('HGET', jk, 'created_at')
redis.call('HSET', jk, 'state', 'queued', 'provider', ARGV[6], 'lane', ARGV[7], 'batch_id', bid,
           'attempts', 0, 'h', 'queued\t' .. now .. '\n', 'updated_at', now)
fair_push(ARGV[6], ARGV[7], redis.call('HGET', jk, 'tenant'), jid)
redis.call('SADD', K.providers, ARGV[6])
redis.call('HINCRBY', K.stats_jobs, 'queued|' .. ARGV[6] .. '|' .. ARGV[7], 1)
local bk = K.batch(bid)
redis.call('HINCRBY', bk, 'total', 1)
redis.call('HINCRBY', bk, 'n_queued', 1)
redis.call('RPUSH', K.batch_jobs(bid), jid)
if cid ~= '' then redis.call('HSETNX', K.batch_cids(bid), cid, jid) end
if existing and existing ~= jid then
  -- the job this one replaces points at it (the re-run chain `editq status` follows)
  redis.call('HSET', K.job(existing), 'superseded_by', jid)
end
return {1, jid}
