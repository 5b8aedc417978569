-- Save a run's checkpoint, and append the events that go before it (those emitted since the
-- writer's last append, and the checkpoint's own), atomically and only while the caller holds
-- the run's lease.
-- KEYS[1]  the run's event stream            (RedisKeys.events)
-- KEYS[2]  the run's lease                   (RedisKeys.lease)
-- KEYS[3]  the run's checkpoint              (RedisKeys.checkpoint)
-- ARGV[1]  fencing token
-- ARGV[2]  the checkpoint JSON
-- ARGV[3]  TTL of the stream and the checkpoint, in seconds
-- ARGV[4 + 3i], ARGV[5 + 3i], ARGV[6 + 3i]  for each event i (i = 0..n-1, none at all for a
--          checkpoint without events): its seq, its JSON, its type, as in append_events.lua
-- Returns 1, or an error reply 'LEASE_LOST' / the XADD error for an out-of-order seq (then
-- nothing of the checkpoint is saved, and the events before it in the call stay appended).
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE_LOST')
end
if #ARGV >= 4 then
  for i = 4, #ARGV, 3 do
    redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'd', ARGV[i + 1], 't', ARGV[i + 2])
  end
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
end
redis.call('SET', KEYS[3], ARGV[2], 'EX', tonumber(ARGV[3]))
return 1
