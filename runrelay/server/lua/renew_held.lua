-- Renew every lease and slot one worker process holds, in one call (worker/renewals.py).
-- KEYS[1..n]        the runs' leases (RedisKeys.lease), n = ARGV[3]
-- KEYS[n+1]         runs sent to Celery, not started yet (RedisKeys.dispatching)
-- KEYS[n+2..]       each slot's tenant concurrency slots (RedisKeys.tenant_slots)
-- ARGV[1]           lease TTL in milliseconds
-- ARGV[2]           slot TTL in milliseconds: a slot expires that long from now (Redis's clock)
-- ARGV[3]           n, how many leases
-- ARGV[4..3+n]      each lease's fencing token
-- ARGV[4+n..]       for each slot, two values: its run id, its dispatching member
--                   ('<tenant id> <run id>')
-- A lease is renewed only for its holder (as renew_lease.lua); a slot as quota_hold.lua does.
-- Returns a list of n: 1 where the lease was renewed, 0 where it is gone or another holder's.
local n = tonumber(ARGV[3])
local renewed = {}
for i = 1, n do
  if redis.call('GET', KEYS[i]) == ARGV[3 + i] then
    renewed[i] = redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    renewed[i] = 0
  end
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
for j = n + 2, #KEYS do
  local arg = 3 + n + 2 * (j - n - 2) + 1
  redis.call('ZADD', KEYS[j], expiry, ARGV[arg])
  redis.call('ZREM', KEYS[n + 1], ARGV[arg + 1])
end
return renewed
