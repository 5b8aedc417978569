-- A worker takes a run's concurrency slot: the slot's expiry moves to now + TTL and the run
-- leaves the dispatching set.
-- KEYS[1]  the tenant's concurrency slots                  (RedisKeys.tenant_slots)
-- KEYS[2]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- KEYS[3]  the tenant's token reservations                (RedisKeys.tenant_reservations)
-- ARGV[1]  run id
-- ARGV[2]  lease TTL, ms: the slot expires that long from now (Redis's clock)
-- ARGV[3]  dispatching member: '<tenant id> <run id>'
-- Returns the run's reservation entry ('<period>|<tokens>'), or false when it has none.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[3])
return redis.call('HGET', KEYS[3], ARGV[1])
