-- What Redis has of the runs the database says are queued (worker/sweeper.py): one call per
-- page of runs, where a pipeline of six commands each (an LPOS among them, which walks the
-- tenant's whole pending queue) cost the sweeper's worker more than the runs it holds.
-- KEYS[1]          runs handed out by the dispatcher, not started yet (RedisKeys.dispatching)
-- KEYS[5i-3..5i+1] the i-th run's lease, event log, fencing counter, its tenant's pending queue
--                  and its thread's waiters (RedisKeys.lease, events, fence, tenant_pending,
--                  thread_waiting; any key when it has no thread)
-- ARGV[3i-2..3i]   the i-th run's id, its member of KEYS[1], '1' when it has a thread
-- Returns one integer per run, the sum of: 1 a lease, 2 an event log, 4 a fencing counter (a
-- worker took its task), 8 in its tenant's pending queue, 16 handed out by the dispatcher,
-- 32 parked on its thread. Each pending queue is read once per call.
local pending_of = {}
local flags = {}
for i = 1, (#KEYS - 1) / 5 do
  local k = 5 * i - 3
  local run_id, member, threaded = ARGV[3 * i - 2], ARGV[3 * i - 1], ARGV[3 * i]
  local f = 0
  if redis.call('EXISTS', KEYS[k]) == 1 then f = f + 1 end
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then f = f + 2 end
  if redis.call('EXISTS', KEYS[k + 2]) == 1 then f = f + 4 end
  local pending = pending_of[KEYS[k + 3]]
  if not pending then
    pending = {}
    for _, id in ipairs(redis.call('LRANGE', KEYS[k + 3], 0, -1)) do pending[id] = true end
    pending_of[KEYS[k + 3]] = pending
  end
  if pending[run_id] then f = f + 8 end
  if redis.call('ZSCORE', KEYS[1], member) then f = f + 16 end
  if threaded == '1' and redis.call('ZSCORE', KEYS[k + 4], run_id) then f = f + 32 end
  flags[i] = f
end
return flags
