-- Move a tenant's oldest pending runs into free concurrency slots (the dispatcher's step).
-- KEYS[1]  concurrency slots, run id → expiry ms         (RedisKeys.tenant_slots)
-- KEYS[2]  the tenant's pending queue                     (RedisKeys.tenant_pending)
-- KEYS[3]  limits last applied (hash)                     (RedisKeys.tenant_limits)
-- KEYS[4]  tenants with pending runs (set)                (RedisKeys.pending_tenants)
-- KEYS[5]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- ARGV[1]  tenant id
-- ARGV[2]  at most this many runs
-- ARGV[3]  dispatch timeout, ms
-- Time is Redis's own clock (TIME), the one clock every shim and worker shares.
-- Returns the run ids promoted: each holds a slot and is in the dispatching set, so a dispatcher
-- that dies before sending its task loses nothing (the set is re-checked on a timer).
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tenant = ARGV[1]
local dispatch_ms = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local cap = tonumber(redis.call('HGET', KEYS[3], 'max_concurrent_runs') or '1')
local free = math.min(cap - redis.call('ZCARD', KEYS[1]), tonumber(ARGV[2]))
local promoted = {}
for _ = 1, free do
  local run = redis.call('LPOP', KEYS[2])
  if not run then break end
  redis.call('ZADD', KEYS[1], now + 2 * dispatch_ms, run)
  redis.call('ZADD', KEYS[5], now + dispatch_ms, tenant .. ' ' .. run)
  promoted[#promoted + 1] = run
end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[4], tenant)
end
return promoted
