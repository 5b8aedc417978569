-- A new run's first writes to Redis, in one atomic step: its `run_queued` (seq 1), its thread's
-- "new" mark (the thread was made for the run) and its Celery task. The worker that pops the
-- task finds the other two; a refused append writes nothing.
-- KEYS[1], KEYS[2]  append_events.lua's (the run's event stream, its lease)
-- KEYS[3]  the Celery queue's list                (TaskSender.run_message)
-- KEYS[4]  the thread's new mark                  (ThreadGate.new_mark; '' for none)
-- ARGV[1]  the task message to push on KEYS[3]; '' pushes none (quotas: the dispatcher sends
--          it when a slot frees)
-- ARGV[2]  the mark's TTL in seconds
-- ARGV[3..]  append_events.lua's ARGV
-- Returns append_events.lua's reply.
local appended = append_events({KEYS[1], KEYS[2]}, {unpack(ARGV, 3)})
if type(appended) == 'table' and appended.err then
  return appended
end
if KEYS[4] ~= '' then
  redis.call('SET', KEYS[4], 1, 'EX', tonumber(ARGV[2]))
end
if ARGV[1] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[1])
end
return appended
