-- Drop a run's lease, only for its holder.
-- KEYS[1]  the run's lease (RedisKeys.lease)
-- ARGV[1]  fencing token
-- Returns 1 when released, 0 when the lease was not the caller's.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
