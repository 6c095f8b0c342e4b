-- Sends jobs waiting for money in one scope back to the queue, each whose worst case fits what the scope
-- may still commit (JobStore.release_budget; the tick calls it for every scope with waiters, and
-- `editq budget` after raising a cap). The claim script checks and reserves again: this only lets them try.
-- Ids in the list that are no longer `budget_wait` (cancelled, failed) are dropped.
-- ARGV: prefix, scope, now, tenant_caps_json, default_tenant_cap, max
-- Returns the number of jobs sent back to the queue.
--@include move.lua
--@include budget.lua
local scope, now = ARGV[2], tonumber(ARGV[3])
local caps = {}
if ARGV[4] and ARGV[4] ~= '' then caps = cjson.decode(ARGV[4]) end
local m = scope_money(scope, math.floor(now / DAY_S), caps, tonumber(ARGV[5] or '-1') or -1)
local room = nil
if m[1] ~= nil then room = m[1] - m[2] end
local max = tonumber(ARGV[6] or '1000')
local wk = K.budget_wait(scope)
local moved = 0
-- one pass over (at most `max` of) the list: a job that fits goes back to the queue, one that does not goes
-- to the back of the list (so a dear job never holds back a cheaper one that fits), a stale id is dropped
local n = math.min(redis.call('LLEN', wk), max)
for _ = 1, n do
  local jid = redis.call('LPOP', wk)
  if not jid then break end
  local jk = K.job(jid)
  if redis.call('HGET', jk, 'state') == 'budget_wait' then
    local cost = worst_case(jk, redis.call('HGET', jk, 'provider'))
    if room ~= nil and cost > room then
      redis.call('RPUSH', wk, jid)
    else
      if room ~= nil then room = room - cost end
      redis.call('HDEL', jk, 'budget_scope', 'budget_reason')
      move(jid, 'budget_wait', 'queued', ARGV[3], 0, 'budget released', 0)
      moved = moved + 1
    end
  end
end
if redis.call('LLEN', wk) == 0 then redis.call('SREM', K.budget_scopes, scope) end
return moved
