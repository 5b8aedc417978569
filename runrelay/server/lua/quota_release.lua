-- A run ended (completed, failed, cancelled) or was abandoned: free its concurrency slot,
-- settle its reservation at the tokens it really used, and wake the dispatcher when the
-- tenant has pending runs.
-- KEYS[1]  the tenant's concurrency slots                  (RedisKeys.tenant_slots)
-- KEYS[2]  reservations, run id → '<period>|<tokens>'     (RedisKeys.tenant_reservations)
-- KEYS[3]  tokens charged in the reservation's period      (RedisKeys.tenant_budget)
-- KEYS[4]  the tenant's pending queue                      (RedisKeys.tenant_pending)
-- KEYS[5]  the dispatcher's wake-up list                   (RedisKeys.dispatch_wakeup)
-- KEYS[6]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- ARGV[1]  run id
-- ARGV[2]  tokens the run used in all
-- ARGV[3]  tenant id
-- ARGV[4]  the budget period KEYS[3] belongs to
-- Returns 1 when a slot was freed, else 0.
local freed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[3] .. ' ' .. ARGV[1])
local entry = redis.call('HGET', KEYS[2], ARGV[1])
if entry then
  local sep = string.find(entry, '|', 1, true)
  local period, held = string.sub(entry, 1, sep - 1), tonumber(string.sub(entry, sep + 1))
  if period == ARGV[4] then
    redis.call('INCRBY', KEYS[3], tonumber(ARGV[2]) - held)
  end
  redis.call('HDEL', KEYS[2], ARGV[1])
end
if redis.call('LLEN', KEYS[4]) > 0 then
  redis.call('RPUSH', KEYS[5], ARGV[3])
  redis.call('LTRIM', KEYS[5], -1000, -1)
end
return freed
