-- Fair sharing between tenants, a function library for create.lua, move.lua and claim.lua.
--
-- Each provider and lane keeps one queue per tenant (K.pending_tenant; jobs without a tenant stay in
-- K.pending, the list editq always had, and count as the tenant '') and a ring K.fair: a zset of the
-- tenants that have queued jobs, scored by the virtual time of their next claim (start-time fair
-- queuing). A claim takes the lowest; each job claimed moves its tenant 1/weight ahead, so backlogged
-- tenants are served in proportion to their weights whatever their backlog. A tenant with nothing queued
-- joins just below the lowest score: its first job is the next one claimed, however long the others' queues.
-- Invariant (every push and pop is in these scripts): a tenant is in the ring iff its list is not empty.
-- Cost: O(log tenants) per job queued or claimed; nothing here reads more than one job of a queue.

local function fair_list(provider, lane, tenant)
  if tenant == nil or tenant == false or tenant == '' then return K.pending(provider, lane) end
  return K.pending_tenant(provider, lane, tenant)
end

-- scores go through strings: Lua's own number formatting keeps only 14 digits
local function fair_score(x)
  return string.format('%.17g', x)
end

-- the tenant with the lowest virtual time in `ring` and that time, or nil
local function fair_head(ring)
  local top = redis.call('ZRANGE', ring, 0, 0, 'WITHSCORES')
  if #top == 0 then return nil, nil end
  return top[1], tonumber(top[2])
end

-- `tenant` has queued jobs: into the ring unless it is there, just ahead of everyone (an empty ring starts at 0)
local function fair_join(ring, tenant)
  if redis.call('ZSCORE', ring, tenant) then return end
  local _, low = fair_head(ring)
  local at = 0
  if low then at = low - (1 + math.abs(low)) * 1e-12 end
  redis.call('ZADD', ring, fair_score(at), tenant)
end

-- queue `jid` in its tenant's list (tenant nil/false/'' = no tenant): at the back, or at the head when `front`
local function fair_push(provider, lane, tenant, jid, front)
  if not tenant then tenant = '' end
  if front then redis.call('LPUSH', fair_list(provider, lane, tenant), jid)
  else redis.call('RPUSH', fair_list(provider, lane, tenant), jid) end
  fair_join(K.fair(provider, lane), tenant)
end

-- jobs queued before tenants had queues of their own sit in K.pending outside the ring: bring them in
local function fair_adopt(provider, lane)
  if redis.call('LLEN', K.pending(provider, lane)) > 0 then fair_join(K.fair(provider, lane), '') end
end

-- the next job of the lane: {job id, its tenant, the tenant's virtual time}, or nil when nothing is queued
local function fair_pop(provider, lane)
  local ring = K.fair(provider, lane)
  while true do
    local tenant, vt = fair_head(ring)
    if not tenant then return nil end
    local jid = redis.call('LPOP', fair_list(provider, lane, tenant))
    if jid then return jid, tenant, vt end
    redis.call('ZREM', ring, tenant)  -- (not reached while the invariant holds)
  end
end

-- after fair_pop: the tenant leaves the ring with its last job, else moves `cost` on (1/weight for a job
-- claimed, 0 for one dropped or sent to wait for money)
local function fair_charge(provider, lane, tenant, vt, cost)
  local ring = K.fair(provider, lane)
  if redis.call('LLEN', fair_list(provider, lane, tenant)) == 0 then redis.call('ZREM', ring, tenant)
  elseif cost > 0 then redis.call('ZADD', ring, fair_score(vt + cost), tenant) end
end

-- are jobs of any tenant queued on this provider and lane?
local function fair_waiting(provider, lane)
  return redis.call('EXISTS', K.fair(provider, lane), K.pending(provider, lane)) > 0
end
