-- Save a run's checkpoint, and optionally append the event that goes with it, atomically and
-- only while the caller holds the run's lease.
-- KEYS[1]  the run's event stream            (RedisKeys.events)
-- KEYS[2]  the run's lease                   (RedisKeys.lease)
-- KEYS[3]  the run's checkpoint              (RedisKeys.checkpoint)
-- ARGV[1]  fencing token
-- ARGV[2]  the checkpoint JSON
-- ARGV[3]  TTL of the stream and the checkpoint, in seconds
-- ARGV[4]  seq of the event to append, or '' for none
-- ARGV[5]  the event JSON
-- ARGV[6]  the event type
-- Returns 1, or an error reply 'LEASE_LOST' / the XADD error for an out-of-order seq.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE_LOST')
end
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[1], '0-' .. ARGV[4], 'd', ARGV[5], 't', ARGV[6])
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
