-- Moves one job if it is in one of the expected states (JobStore.move).
-- ARGV: prefix, job_id, from_csv, to, now, score, note, ttl, nfields, f1, v1, ..., kick_ms[, found]
-- `found` ("provider|via", optional): counted in K.stats_found when the job moves (Pipeline.complete).
-- Returns {0, '', 0} (no such job), {0, current, 0} (not in an expected state) or
-- {1, previous, batch_finished, freed_provider, kicks}.
--@include move.lua
local jid, from, to = ARGV[2], ARGV[3], ARGV[4]
local jk = K.job(jid)
local cur = redis.call('HGET', jk, 'state')
if not cur then return {0, '', 0} end
local allowed = false
for s in string.gmatch(from, '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {0, cur, 0} end
local old_provider = redis.call('HGET', jk, 'provider')
local n = tonumber(ARGV[9])
for i = 0, n - 1 do redis.call('HSET', jk, ARGV[10 + 2 * i], ARGV[11 + 2 * i]) end
local freed = ''
if to ~= 'submitting' and to ~= 'submitted' and old_provider then
  if redis.call('ZREM', K.slots(old_provider), jid) == 1
     and (fair_waiting(old_provider, 'interactive') or fair_waiting(old_provider, 'bulk')) then
    freed = old_provider
  end
end
local finished = move(jid, cur, to, ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8]), old_provider)
-- wake-ups in the same round trip: a kick flag set here (NX, it coalesces a burst and a running pump
-- holds it) tells the caller to send that task; bit 1 dispatch of the freed provider, bit 2 collect
local kicks = 0
local kick_ms = tonumber(ARGV[10 + 2 * n] or '0')
if kick_ms > 0 then
  if freed ~= '' and redis.call('SET', K.kick_dispatch(freed), '1', 'NX', 'PX', kick_ms) then
    kicks = kicks + 1
  end
  if to == 'ready' and redis.call('SET', K.kick_collect, '1', 'NX', 'PX', kick_ms) then
    kicks = kicks + 2
  end
end
local found = ARGV[11 + 2 * n]
if found and found ~= '' then redis.call('HINCRBY', K.stats_found, found, 1) end
return {1, cur, finished, freed, kicks}
