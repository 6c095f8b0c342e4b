-- Claims up to `want` ready jobs for collecting (JobStore.claim_ready), in one step: popped from the ready
-- list and moved to `collecting` (leased until `lease`, owned by `owner`, its collect attempt counted) in
-- the same script. Popping first and moving after, in two round trips, lost the popped jobs when the
-- worker died (or its Redis connection dropped) in between: `ready`, yet in no index, collected by nobody.
-- Ids that are no longer `ready` (a racer moved them) are dropped from the list.
-- ARGV: prefix, now, want, lease, owner
-- Returns the claimed job ids.
--@include move.lua
local now, want, lease, owner = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
while #out < want do
  local jid = redis.call('LPOP', K.ready)
  if not jid then break end
  local jk = K.job(jid)
  if redis.call('HGET', jk, 'state') == 'ready' then
    redis.call('HINCRBY', jk, 'collect_attempts', 1)
    redis.call('HSET', jk, 'owner', owner)
    move(jid, 'ready', 'collecting', now, lease, '', 0, redis.call('HGET', jk, 'provider'))
    table.insert(out, jid)
  end
end
return out
