-- A worker takes (or renews) a run's concurrency slot: the slot's expiry moves to now + TTL and
-- the run leaves the dispatching set.
-- KEYS[1]  the tenant's concurrency slots                  (RedisKeys.tenant_slots)
-- KEYS[2]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- ARGV[1]  run id
-- ARGV[2]  new expiry, epoch ms
-- ARGV[3]  dispatching member: '<tenant id> <run id>'
-- Returns 1.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return 1
