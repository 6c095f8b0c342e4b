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

-- Retention (docs/operations.md): the move that makes a job terminal rewrites its hash to the compact record
-- that later commands read (worker/state.py JobView), and stages its manifest (whose copy lives in S3) in its
-- batch's `batch_manifests` hash until the batch manifest is written. Every value of the record is short
-- (<= 64 bytes in the common case), so Redis keeps the hash as a listpack: ~0.4 KB instead of ~5.7 KB.
-- Kept as they are: these fields. Derived: cid/grp/var/par (custom_id, group, variant, parent_job_id of
-- the spec), cost_usd (of the manifest), per output i: o.i = ext|bytes|WxH|content_type, s.i = sha256, and
-- kp.i = the key's prefix when the key is <kp>/<batch>/<job>/<i>.<ext> (else k.i = the whole key).
local COMPACT_KEEP = {'state', 'provider', 'lane', 'batch_id', 'attempts', 'created_at', 'updated_at',
                      'request_id', 'tenant', 'superseded_by', 'rerun_of', 'rerun_of_batch', 'error', 'spent',
                      'budget_reason', 'free_attempts'}
local SPEC_SHORT = {custom_id = 'cid', group = 'grp', variant = 'var', parent_job_id = 'par'}

local function decoded(raw)
  if not raw or raw == '' then return nil end
  local ok, value = pcall(cjson.decode, raw)
  if ok and type(value) == 'table' then return value end
  return nil
end

local function compact(jk, jid, bid, ttl, to)
  local all = redis.call('HGETALL', jk)
  local f = {}
  for i = 1, #all, 2 do f[all[i]] = all[i + 1] end
  local out = {}
  local function put(name, value) out[#out + 1] = name; out[#out + 1] = value end
  for _, name in ipairs(COMPACT_KEEP) do
    if f[name] and f[name] ~= '' then put(name, f[name]) end
  end
  -- a job cancelled while the provider holds its request: `editq.cancel_remote` cancels it there (then drops it)
  if to == 'cancelled' and f.request_id and f.request_id ~= '' and f.handle then put('handle', f.handle) end
  local spec = decoded(f.spec)
  if spec then
    for name, short in pairs(SPEC_SHORT) do
      if type(spec[name]) == 'string' and spec[name] ~= '' then put(short, spec[name]) end
    end
  end
  if f.manifest and f.manifest ~= '' then
    if bid then
      local mk = K.batch_manifests(bid)
      redis.call('HSET', mk, jid, f.manifest)
      if ttl > 0 then redis.call('EXPIRE', mk, ttl) end
    end
    local m = decoded(f.manifest)
    if m and type(m.cost_usd) == 'number' then put('cost_usd', tostring(m.cost_usd)) end
  end
  local outs = decoded(f.outputs)
  if outs then
    for i, o in ipairs(outs) do
      local idx = string.format('%d', tonumber(o.index) or (i - 1))
      local key = type(o.key) == 'string' and o.key or ''
      local ext = string.match(key, '%.(%w+)$') or ''
      put('o.' .. idx, ext .. '|' .. string.format('%d', tonumber(o.bytes) or 0) .. '|'
          .. string.format('%d', tonumber(o.width) or 0) .. 'x' .. string.format('%d', tonumber(o.height) or 0)
          .. '|' .. (type(o.content_type) == 'string' and o.content_type or ''))
      put('s.' .. idx, type(o.sha256) == 'string' and o.sha256 or '')
      local tail = '/' .. (bid or '') .. '/' .. jid .. '/' .. idx .. '.' .. ext
      if bid and ext ~= '' and #key > #tail and string.sub(key, -#tail) == tail then
        put('kp.' .. idx, string.sub(key, 1, #key - #tail))
      else
        put('k.' .. idx, key)
      end
    end
  end
  redis.call('DEL', jk)
  redis.call('HSET', jk, unpack(out))
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
  if terminal then compact(jk, jid, bid, ttl, to) end
  if terminal and ttl > 0 then redis.call('EXPIRE', jk, ttl) end
  return finished
end
