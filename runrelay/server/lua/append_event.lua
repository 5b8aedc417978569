-- Append one event to a run's log, only while the caller holds the run's lease.
-- KEYS[1]  the run's event stream            (RedisKeys.events)
-- KEYS[2]  the run's lease                   (RedisKeys.lease)
-- ARGV[1]  fencing token; '' appends without a lease (the shim's run_queued, seq 1)
-- ARGV[2]  seq: the entry id is 0-<seq>, so Redis refuses a seq that is not above the last one
-- ARGV[3]  the event JSON
-- ARGV[4]  the event type
-- ARGV[5]  stream TTL in seconds
-- Returns 1, or an error reply 'LEASE_LOST' / the XADD error for an out-of-order seq.
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE_LOST')
end
redis.call('XADD', KEYS[1], '0-' .. ARGV[2], 'd', ARGV[3], 't', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 1
