-- A run's start in one call (worker/starts.py): its lease (`acquire_lease`, unless the caller
-- holds it already), then its thread (`thread_enter`), then, if it holds the thread, its
-- concurrency slot (`quota_hold`) and the last seq its log reached, as four calls would.
-- KEYS[1..2]  acquire_lease's: the run's fence counter, its lease
-- KEYS[3..5]  thread_enter's: the thread's owner, its waiters, its "new" mark
-- KEYS[6..8]  quota_hold's: the tenant's slots, the dispatching set, its reservations
-- KEYS[9]     the run's event stream (RedisKeys.events)
-- ARGV[1..3]  acquire_lease's (ARGV[1] '' when the caller holds the lease already)
-- ARGV[4..6]  thread_enter's (ARGV[4] '' for a run without a thread)
-- ARGV[7..9]  quota_hold's
-- Returns {token, holder, new, reservation, last entry id}, each as its own script returns it:
-- token false when another holder's lease is alive (then nothing else was done); holder not ''
-- when the run is parked behind it (no slot taken, no last entry id: ''); last entry id '' for an
-- empty log.
local token = ''
if ARGV[1] ~= '' then
  token = acquire_lease({KEYS[1], KEYS[2]}, {ARGV[1], ARGV[2], ARGV[3]})
  if not token then
    return {false, '', 0, false, ''}
  end
end
local entered = {'', 0}
if ARGV[4] ~= '' then
  entered = thread_enter({KEYS[3], KEYS[4], KEYS[5]}, {ARGV[4], ARGV[5], ARGV[6]})
  if entered[1] ~= '' then
    return {token, entered[1], 0, false, ''}
  end
end
local reservation = quota_hold({KEYS[6], KEYS[7], KEYS[8]}, {ARGV[7], ARGV[8], ARGV[9]})
local last = redis.call('XREVRANGE', KEYS[9], '+', '-', 'COUNT', 1)
return {token, '', entered[2], reservation, last[1] and last[1][1] or ''}
