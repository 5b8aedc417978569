-- Extend a run's lease, only for its holder.
-- KEYS[1]  the run's lease (RedisKeys.lease)
-- ARGV[1]  fencing token
-- ARGV[2]  new TTL in milliseconds
-- Returns 1 when renewed, 0 when the lease is held by someone else or gone.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
