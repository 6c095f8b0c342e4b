-- Budgets, a function library for claim.lua and release.lua: what a scope may still commit (micro-USD).
-- A batch's cap is its hash's `max_cost` (editq submit --max-cost, editq budget BATCH); a tenant's daily cap
-- is `editq budget --tenant` (K.tenant_budgets), else the settings' map, else the settings' default.
-- `caps` is the settings' map decoded once per script; `default_cap` < 0 means no default.
local DAY_S = 86400

local function tenant_cap(tenant, caps, default_cap)
  local override = redis.call('HGET', K.tenant_budgets, tenant)
  if override then return tonumber(override) end
  if caps[tenant] ~= nil then return tonumber(caps[tenant]) end
  if default_cap >= 0 then return default_cap end
  return nil
end

-- {cap, committed} of a scope ('batch:<id>' or 'tenant:<name>') on `day`; cap nil = no budget
local function scope_money(scope, day, caps, default_cap)
  local kind, id = string.match(scope, '^(%a+):(.*)$')
  if kind == 'batch' then
    local bk = K.batch(id)
    local cap = redis.call('HGET', bk, 'max_cost')
    return {cap and tonumber(cap) or nil, tonumber(redis.call('HGET', bk, 'committed') or '0') or 0}
  end
  local cap = tenant_cap(id, caps, default_cap)
  return {cap, tonumber(redis.call('HGET', K.tenant_day(id, day), 'committed') or '0') or 0}
end

-- The job's worst case on `provider` (set at enqueue; 0 when the provider has no price model)
local function worst_case(jk, provider)
  return tonumber(redis.call('HGET', jk, 'wc.' .. provider) or '0') or 0
end

local function usd(micro)
  return string.format('$%.2f', micro / 1000000)
end
