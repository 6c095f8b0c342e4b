-- Creates jobs, a chunk at a time, each unless its idempotency key is already taken (JobStore.create_many).
-- A key held by a job that ended failed or cancelled (or in a state listed in `replaceable`) is not
-- taken: the same line submitted again makes a new job, and the key then names the new one.
-- ARGV: prefix, idem_ttl, replaceable (csv of states), jobs: a JSON array, one entry per job, in order:
--       [job_id, batch_id, idem_key, provider, lane, custom_id ('' for none), tenant ('' for none),
--        created_at, [f1, v1, f2, v2, ...] (the job hash's own fields)]
-- Returns {created_1, id_1, created_2, id_2, ...}: 1 and the job's id, or 0 and the existing job's id.
-- The jobs are decided and written in order (a later job of the chunk sees an earlier one's key); what only
-- adds up (queue pushes, counters, the batch's job list) is written once per chunk, in the same order, so
-- the result is the one a script call per job gave. A script runs whole (Redis refuses a write for lack of
-- memory only before a script's first write), so a chunk is never left half written.
--@include fair.lua
local ttl = tonumber(ARGV[2])
local free = {}
for s in string.gmatch(ARGV[3], '[^,]+') do free[s] = true end
local jobs = cjson.decode(ARGV[4])

-- `t[key]`, appended to `order` the first time it is asked for (so per-chunk writes keep first-seen order)
local function group(t, order, key, make)
  local g = t[key]
  if g == nil then
    g = make()
    t[key] = g
    order[#order + 1] = g
  end
  return g
end

-- RPUSH of many ids, a slice at a time (Lua's unpack is bounded by its C stack)
local function push_all(key, ids)
  for i = 1, #ids, 1000 do
    redis.call('RPUSH', key, unpack(ids, i, math.min(i + 999, #ids)))
  end
end

local out = {}
local queues, queue_order = {}, {}   -- provider/lane/tenant -> the ids queued there
local batches, batch_order = {}, {}  -- batch id -> the ids created in it
local counts, count_order = {}, {}   -- 'queued|provider|lane' -> jobs
for _, j in ipairs(jobs) do
  local jid, bid, idem, provider, lane, cid, tenant, now, fields = j[1], j[2], j[3], j[4], j[5], j[6], j[7], j[8], j[9]
  local ik = K.idem(idem)
  local existing = redis.call('GET', ik)
  local taken = false
  if existing then
    local state = redis.call('HGET', K.job(existing), 'state')
    taken = state and not free[state]
  end
  if taken then
    out[#out + 1] = 0
    out[#out + 1] = existing
  else
    redis.call('SET', ik, jid, 'EX', ttl)
    local n = #fields  -- the job's own fields, then its state: one HSET
    fields[n + 1], fields[n + 2] = 'state', 'queued'
    fields[n + 3], fields[n + 4] = 'provider', provider
    fields[n + 5], fields[n + 6] = 'lane', lane
    fields[n + 7], fields[n + 8] = 'batch_id', bid
    fields[n + 9], fields[n + 10] = 'attempts', 0
    fields[n + 11], fields[n + 12] = 'h', 'queued\t' .. now .. '\n'
    fields[n + 13], fields[n + 14] = 'updated_at', now
    redis.call('HSET', K.job(jid), unpack(fields))
    local q = group(queues, queue_order, provider .. '\n' .. lane .. '\n' .. tenant,
                    function() return {provider = provider, lane = lane, tenant = tenant, ids = {}} end)
    q.ids[#q.ids + 1] = jid
    local c = group(counts, count_order, 'queued|' .. provider .. '|' .. lane,
                    function() return {field = 'queued|' .. provider .. '|' .. lane, n = 0} end)
    c.n = c.n + 1
    local b = group(batches, batch_order, bid, function() return {bid = bid, ids = {}} end)
    b.ids[#b.ids + 1] = jid
    if cid ~= '' then redis.call('HSETNX', K.batch_cids(bid), cid, jid) end
    if existing and existing ~= jid then
      -- the job this one replaces points at it (the re-run chain `editq status` follows)
      redis.call('HSET', K.job(existing), 'superseded_by', jid)
    end
    out[#out + 1] = 1
    out[#out + 1] = jid
  end
end
for _, q in ipairs(queue_order) do
  push_all(fair_list(q.provider, q.lane, q.tenant), q.ids)
  fair_join(K.fair(q.provider, q.lane), q.tenant)
  redis.call('SADD', K.providers, q.provider)
end
for _, c in ipairs(count_order) do redis.call('HINCRBY', K.stats_jobs, c.field, c.n) end
for _, b in ipairs(batch_order) do
  local bk = K.batch(b.bid)
  redis.call('HINCRBY', bk, 'total', #b.ids)
  redis.call('HINCRBY', bk, 'n_queued', #b.ids)
  push_all(K.batch_jobs(b.bid), b.ids)
end
return out
