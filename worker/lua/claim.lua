-- Claims up to `want` queued jobs of one provider (JobStore.claim), interactive lane first, within the
-- global concurrency cap (bulk may not use the last `reserve` slots) and the requests-per-minute budget.
-- hold_ms < 0: the reserve is always held. hold_ms >= 0: it is held only while interactive jobs are
-- queued or one was claimed in the last hold_ms, so a bulk-only workload can use the whole cap.
-- ARGV: prefix, provider, now, want, cap, reserve, rpm, lease_s, hold_ms
-- Returns the claimed job ids (now `submitting`, each holding a slot).
--@include move.lua
local provider = ARGV[2]
local now, want, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local reserve, rpm, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local hold_ms = tonumber(ARGV[9] or '-1')
if redis.call('EXISTS', K.backoff(provider)) == 1 then return {} end
local slots = K.slots(provider)
local free = cap - redis.call('ZCARD', slots)
if free <= 0 then return {} end
local mark = K.interactive_mark(provider)
if reserve > 0 and hold_ms >= 0 and redis.call('EXISTS', mark) == 0
   and redis.call('LLEN', K.pending(provider, 'interactive')) == 0 then
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
  local pk = K.pending(provider, lane)
  while #out < budget and #out < lane_free do
    local jid = redis.call('LPOP', pk)
    if not jid then break end
    local jk = K.job(jid)
    if redis.call('HGET', jk, 'state') == 'queued' and redis.call('HGET', jk, 'provider') == provider then
      redis.call('ZADD', slots, now, jid)
      redis.call('HINCRBY', jk, 'attempts', 1)
      if rpm > 0 then redis.call('ZADD', rk, now, jid .. ':' .. now) end
      move(jid, 'queued', 'submitting', ARGV[3], now + lease, '', 0)
      table.insert(out, jid)
      if lane == 'interactive' and hold_ms > 0 then redis.call('SET', mark, '1', 'PX', hold_ms) end
    end
  end
end
return out
