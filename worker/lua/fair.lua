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

-- A claim walks a lane with a cursor: the lowest tenant is read once for a run of its jobs (it stays lowest
-- until its virtual time reaches the next tenant's), and its time is written back once at the end of the run.
-- So one tenant alone costs one LPOP per job; tenants that alternate cost a ZRANGE and a ZADD per run.
local function fair_cursor(provider, lane)
  return {provider = provider, lane = lane, ring = K.fair(provider, lane)}
end

-- end the cursor's run: its tenant leaves the ring with its last job, else takes its new virtual time
local function fair_flush(c)
  if c.tenant == nil then return end
  if redis.call('LLEN', c.list) == 0 then redis.call('ZREM', c.ring, c.tenant)
  elseif c.vt ~= c.start then redis.call('ZADD', c.ring, fair_score(c.vt), c.tenant) end
  c.tenant = nil
end

-- the next job of the lane and its tenant, or nil when nothing is queued
local function fair_next(c)
  while true do
    if c.tenant == nil then
      local top = redis.call('ZRANGE', c.ring, 0, 1, 'WITHSCORES')
      if #top == 0 then return nil end
      c.tenant, c.vt = top[1], tonumber(top[2])
      c.start, c.limit = c.vt, math.huge
      if top[4] then c.limit = tonumber(top[4]) end
      c.list = fair_list(c.provider, c.lane, c.tenant)
    end
    local jid = redis.call('LPOP', c.list)
    if jid then return jid, c.tenant end
    fair_flush(c)  -- (its queue ran out: it leaves the ring)
  end
end

-- the job fair_next gave was claimed: its tenant moves `cost` (1/weight) on; a job dropped or sent to wait
-- for money costs nothing
local function fair_charge(c, cost)
  c.vt = c.vt + cost
  if c.vt >= c.limit then fair_flush(c) end
end

-- are jobs of any tenant queued on this provider and lane?
local function fair_waiting(provider, lane)
  return redis.call('EXISTS', K.fair(provider, lane), K.pending(provider, lane)) > 0
end
