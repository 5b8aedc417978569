-- Push back the deadline of a dispatched run that no worker has started yet, before sending its
-- task again; only while it is still in the dispatching set (a worker may have just claimed it).
-- KEYS[1]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- KEYS[2]  the tenant's concurrency slots                  (RedisKeys.tenant_slots)
-- ARGV[1]  member: '<tenant id> <run id>'
-- ARGV[2]  run id
-- ARGV[3]  dispatch timeout, ms
-- Time is Redis's own clock (TIME), the one clock every shim and worker shares.
-- Returns 1 when the caller should send the task again, 0 when the run was claimed meanwhile.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local dispatch_ms = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + dispatch_ms, ARGV[1])
redis.call('ZADD', KEYS[2], now + 2 * dispatch_ms, ARGV[2])
return 1
