-- Claims up to `want` queued jobs of one provider (JobStore.claim), interactive lane first, within the
-- global concurrency cap (bulk may not use the last `reserve` slots) and the requests-per-minute budget.
-- hold_ms < 0: the reserve is always held. hold_ms >= 0: it is held only while interactive jobs are
-- queued or one was claimed in the last hold_ms, so a bulk-only workload can use the whole cap.
-- Money is a global limit too: each job claimed reserves its worst-case cost (`wc.<provider>`, set at
-- enqueue) against its batch's and its tenant's day budget in this same script, so no two claimers can both
-- take the last dollar. A job that does not fit leaves the queue for `budget_wait` (its scope's wait list,
-- released by release.lua when money frees up or a cap is raised), or, if its batch chose
-- --on-budget fail, is returned to the caller to be failed with `budget_exceeded`.
-- Tenants share each lane by weight (worker/lua/fair.lua): each job is taken from the tenant lowest in the
-- lane's ring, and a job claimed moves its tenant 1/weight on; lanes keep their order (interactive first).
-- ARGV: prefix, provider, now, want, cap, reserve, rpm, lease_s, hold_ms, tenant_caps_json, default_tenant_cap,
--       max_scan, tenant_weights_json, default_tenant_weight, owner
-- `owner` (the claiming worker, as its heartbeat names it) is written with the claim itself: a worker lost
-- between this script and its next write still owns its claims, so the tick's reaper recovers them at once
-- instead of after the lease (a synchronous provider's lease is its timeout + 60 s).
-- Returns {claimed job ids (now `submitting`, each holding a slot and its reservation), ids to fail}.
--@include fair.lua
--@include move.lua
--@include budget.lua
local provider = ARGV[2]
local now, want, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reserve, rpm, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local hold_ms = tonumber(ARGV[9] or '-1')
local caps = {}
if ARGV[10] and ARGV[10] ~= '' then caps = cjson.decode(ARGV[10]) end
local default_cap = tonumber(ARGV[11] or '-1') or -1
local max_scan = tonumber(ARGV[12] or '0') or 0
local weights = {}
if ARGV[13] and ARGV[13] ~= '' then weights = cjson.decode(ARGV[13]) end
local default_weight = tonumber(ARGV[14] or '1') or 1
local owner = ARGV[15] or ''
local function weight_of(tenant)
  local w = tonumber(weights[tenant] or default_weight)
  if not w or w <= 0 then w = 1 end
  return w
end
if redis.call('EXISTS', K.backoff(provider)) == 1 then return {{}, {}} end
local slots = K.slots(provider)
local free = cap - redis.call('ZCARD', slots)
if free <= 0 then return {{}, {}} end
local day = math.floor(now / DAY_S)

-- nil when the job fits every budget (and reserves it), else {scope, reason}
local function reserve_money(jid, jk)
  local cost = worst_case(jk, provider)
  local bid = redis.call('HGET', jk, 'batch_id')
  local tenant = redis.call('HGET', jk, 'tenant')
  local scopes = {'batch:' .. bid}
  if tenant and tenant ~= '' then table.insert(scopes, 'tenant:' .. tenant) end
  for _, scope in ipairs(scopes) do
    local m = scope_money(scope, day, caps, default_cap)
    if m[1] ~= nil and m[2] + cost > m[1] then
      local what = 'batch budget'
      if string.sub(scope, 1, 7) == 'tenant:' then what = 'tenant ' .. tenant .. ' daily budget' end
      return {scope, what .. ' ' .. usd(m[1]) .. ': ' .. usd(m[2]) .. ' committed, this job needs up to ' ..
              usd(cost) .. ' on ' .. provider}
    end
  end
  redis.call('HINCRBY', K.batch(bid), 'committed', cost)
  if tenant and tenant ~= '' then
    local tk = K.tenant_day(tenant, day)
    redis.call('HINCRBY', tk, 'committed', cost)
    redis.call('EXPIRE', tk, 8 * DAY_S)
  end
  redis.call('HSET', jk, 'resv', cost, 'resv_day', day)
  return nil
end
local fails = {}
local scanned = 0
local mark = K.interactive_mark(provider)
if reserve > 0 and hold_ms >= 0 and redis.call('EXISTS', mark) == 0
   and not fair_waiting(provider, 'interactive') then
  reserve = 0
end
local budget = want
local rk = K.rpm(provider)
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - 60)
  local left = rpm - redis.call('ZCARD', rk)
  if left < budget then budget = left end
end
local out = {}
for _, lane in ipairs({'interactive', 'bulk'}) do
  local lane_free = free
  if lane == 'bulk' then lane_free = free - reserve end
  fair_adopt(provider, lane)
  local cursor = fair_cursor(provider, lane)
  while #out < budget and #out < lane_free and (max_scan <= 0 or scanned < max_scan) do
    local jid, tenant = fair_next(cursor)
    if not jid then break end
    scanned = scanned + 1
    local claimed = false
    local jk = K.job(jid)
    local blocked = nil
    if redis.call('HGET', jk, 'state') == 'queued' and redis.call('HGET', jk, 'provider') == provider then
      blocked = reserve_money(jid, jk)
      if blocked then
        redis.call('HSET', jk, 'budget_scope', blocked[1], 'budget_reason', blocked[2])
        move(jid, 'queued', 'budget_wait', ARGV[3], 0, blocked[2], 0)
        local bid = redis.call('HGET', jk, 'batch_id')
        -- listed even when it is to fail, so a caller lost before failing it never strands it
        redis.call('RPUSH', K.budget_wait(blocked[1]), jid)
        redis.call('SADD', K.budget_scopes, blocked[1])
        if redis.call('HGET', K.batch(bid), 'on_budget') == 'fail' then table.insert(fails, jid) end
      end
    end
    if blocked == nil and redis.call('HGET', jk, 'state') == 'queued' and redis.call('HGET', jk, 'provider') == provider then
      redis.call('ZADD', slots, now, jid)
      redis.call('HINCRBY', jk, 'attempts', 1)
      if owner ~= '' then redis.call('HSET', jk, 'owner', owner) end
      if rpm > 0 then redis.call('ZADD', rk, now, jid .. ':' .. now) end
      move(jid, 'queued', 'submitting', ARGV[3], now + lease, '', 0)
      table.insert(out, jid)
      claimed = true
      if lane == 'interactive' and hold_ms > 0 then redis.call('SET', mark, '1', 'PX', hold_ms) end
    end
    if claimed then fair_charge(cursor, 1 / weight_of(tenant)) end
  end
  fair_flush(cursor)
end
return {out, fails}
