-- A run about to start asks for its thread: it takes the thread when nobody holds it, when it
-- holds it already (handed over, or resumed), or when the holder is `stale` (the caller found it
-- finished in the database); otherwise it is parked among the thread's waiters.
-- KEYS[1]  the thread's owner: run id                     (RedisKeys.thread_owner)
-- KEYS[2]  runs waiting for the thread, score = created ms (RedisKeys.thread_waiting)
-- KEYS[3]  the thread is new: no run has held it yet       (RedisKeys.thread_new)
-- ARGV[1]  run id
-- ARGV[2]  the run's creation time, epoch ms (its place among the waiters)
-- ARGV[3]  a finished run that may still hold the thread, to take over ('' for none)
-- Returns {'', new} when the run holds the thread (it may start; new = 1 when it is the first
-- run to hold it, which takes KEYS[3] away), else {the id of the run that holds it, 0} (the run
-- is now parked in KEYS[2]).
local owner = redis.call('GET', KEYS[1])
if not owner or owner == ARGV[1] or owner == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {'', redis.call('DEL', KEYS[3])}
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return {owner, 0}
