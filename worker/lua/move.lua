-- The one move of a job between states: its index, its hash (state, history), its batch counters, and
-- the settlement of its budget reservation.
-- A function library: included by transition.lua, claim.lua and release.lua; key names come from K
-- (worker/keys.py).
--
-- Money (integer micro-USD): a claim reserves the job's worst case (`resv` on the job, added to `committed`
-- of its batch and of its tenant's day). The reservation is held while the job is with the provider
-- (submitting, submitted, ready, collecting). When the job leaves those states for any other, it is settled:
-- the job hash's `settle` field (set by the caller in the same script) is the amount to keep as spent,
-- `all` or absent = keep the whole reservation (an attempt that may have been billed keeps its money); the
-- rest is released. So no path out of the provider's hands can leak or forget a reservation.
-- A job back to `queued` joins its tenant's queue (fair.lua).
--@include fair.lua
local HOLDING = {submitting = true, submitted = true, ready = true, collecting = true}

local function settle(jk, bid)
  local resv = tonumber(redis.call('HGET', jk, 'resv') or '0') or 0
  local how = redis.call('HGET', jk, 'settle')
  local keep = resv
  if how and how ~= 'all' and how ~= '' then keep = tonumber(how) or resv end
  redis.call('HDEL', jk, 'settle')
  redis.call('HSET', jk, 'resv', 0)
  redis.call('HINCRBY', jk, 'spent', keep)
  local delta = keep - resv
  if bid then
    local bk = K.batch(bid)
    redis.call('HINCRBY', bk, 'committed', delta)
    redis.call('HINCRBY', bk, 'spent', keep)
  end
  local tenant = redis.call('HGET', jk, 'tenant')
  local day = redis.call('HGET', jk, 'resv_day')
  if tenant and tenant ~= '' and day and day ~= '' then
    local tk = K.tenant_day(tenant, day)
    redis.call('HINCRBY', tk, 'committed', delta)
    redis.call('HINCRBY', tk, 'spent', keep)
  end
end

-- from_provider: the provider the job had before this move (a reroute changes it first); nil = unchanged.
local function move(jid, cur, to, now, score, note, ttl, from_provider)
  local jk = K.job(jid)
  if HOLDING[cur] and not HOLDING[to] then settle(jk, redis.call('HGET', jk, 'batch_id')) end
  if cur == 'submitting' or cur == 'submitted' then redis.call('ZREM', K.inflight, jid)
  elseif cur == 'retry_wait' then redis.call('ZREM', K.retry, jid)
  elseif cur == 'collecting' then redis.call('ZREM', K.collecting, jid) end
  local provider = redis.call('HGET', jk, 'provider')
  -- the metrics' job counts (worker/metrics.py): one field per state, provider and lane
  local lane_of = redis.call('HGET', jk, 'lane') or 'bulk'
  redis.call('HINCRBY', K.stats_jobs, cur .. '|' .. (from_provider or provider) .. '|' .. lane_of, -1)
  redis.call('HINCRBY', K.stats_jobs, to .. '|' .. provider .. '|' .. lane_of, 1)
  if to == 'queued' then
    -- A job coming back (a retry, a claim recovered from a lost worker, a reroute) has waited longest: it goes
    -- to the head of its tenant's queue, not behind the whole backlog (a retried job waited 2 min behind the
    -- rest of a 1,000-job batch and finished last, a minute after everything else). New jobs and budget waits
    -- queue up.
    local back = cur == 'retry_wait' or cur == 'submitting' or cur == 'submitted'
    fair_push(provider, redis.call('HGET', jk, 'lane'), redis.call('HGET', jk, 'tenant'), jid, back)
    redis.call('SADD', K.providers, provider)
  elseif to == 'submitting' or to == 'submitted' then redis.call('ZADD', K.inflight, score, jid)
  elseif to == 'retry_wait' then redis.call('ZADD', K.retry, score, jid)
  elseif to == 'ready' then
    -- collect pops from the head: interactive results are stored ahead of any bulk backlog
    if redis.call('HGET', jk, 'lane') == 'interactive' then redis.call('LPUSH', K.ready, jid)
    else redis.call('RPUSH', K.ready, jid) end
  elseif to == 'collecting' then redis.call('ZADD', K.collecting, score, jid) end
  local entry = to .. '\t' .. now
  if note ~= '' then entry = entry .. '\t' .. note end
  redis.call('HSET', jk, 'state', to, 'updated_at', now,
             'h', (redis.call('HGET', jk, 'h') or '') .. entry .. '\n')
  local terminal = (to == 'succeeded' or to == 'failed' or to == 'cancelled')
  local finished = 0
  local bid = redis.call('HGET', jk, 'batch_id')
  if bid then
    local bk = K.batch(bid)
    redis.call('HINCRBY', bk, 'n_' .. cur, -1)
    redis.call('HINCRBY', bk, 'n_' .. to, 1)
    if terminal then
      if provider then redis.call('HINCRBY', bk, 'p:' .. provider .. ':' .. to, 1) end  -- per-provider split
      local d = redis.call('HINCRBY', bk, 'done', 1)
      if redis.call('HGET', bk, 'closed') == '1' and d >= tonumber(redis.call('HGET', bk, 'total') or '0') then
        if redis.call('HSETNX', bk, 'finalizing', now) == 1 then
          redis.call('ZADD', K.finalize, now, bid)
          finished = 1
        end
      end
    end
  end
  if terminal and ttl > 0 then redis.call('EXPIRE', jk, ttl) end
  return finished
end
