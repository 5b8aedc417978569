-- Append events to a run's log, only while the caller holds the run's lease: one call for a
-- whole batch (the worker's writer sends what accumulated while its previous call was out).
-- KEYS[1]  the run's event stream            (RedisKeys.events)
-- KEYS[2]  the run's lease                   (RedisKeys.lease)
-- ARGV[1]  fencing token; '' appends without a lease (the shim's run_queued, seq 1)
-- ARGV[2]  stream TTL in seconds
-- ARGV[3 + 3i], ARGV[4 + 3i], ARGV[5 + 3i]  for each event i (i = 0..n-1): its seq (the entry
--          id is 0-<seq>, so Redis refuses a seq that is not above the last one), its JSON,
--          its type
-- Returns the number of events appended, or an error reply 'LEASE_LOST' / the XADD error for
-- an out-of-order seq (the events before it in the batch stay appended).
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LEASE_LOST')
end
local n = 0
for i = 3, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'd', ARGV[i + 1], 't', ARGV[i + 2])
  n = n + 1
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return n
