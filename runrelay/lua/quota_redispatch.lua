-- Push back the deadline of a dispatched run that no worker has started yet, before sending its
-- task again; only while it is still in the dispatching set (a worker may have just claimed it).
-- KEYS[1]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- KEYS[2]  the tenant's concurrency slots                  (RedisKeys.tenant_slots)
-- ARGV[1]  now, epoch ms
-- ARGV[2]  member: '<tenant id> <run id>'
-- ARGV[3]  run id
-- ARGV[4]  dispatch timeout, ms
-- Returns 1 when the caller should send the task again, 0 when the run was claimed meanwhile.
local now, dispatch_ms = tonumber(ARGV[1]), tonumber(ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + dispatch_ms, ARGV[2])
redis.call('ZADD', KEYS[2], now + 2 * dispatch_ms, ARGV[3])
return 1
