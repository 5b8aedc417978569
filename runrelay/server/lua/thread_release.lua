-- A run of the thread finished (any terminal status): it leaves the waiters, and if it held the
-- thread (or nobody does) the thread goes to the oldest waiter, or is free when none waits.
-- KEYS[1]  the thread's owner: run id                     (RedisKeys.thread_owner)
-- KEYS[2]  runs waiting for the thread, score = created ms (RedisKeys.thread_waiting)
-- ARGV[1]  the finished run's id ('' to hand over a thread whose owner key is gone)
-- Returns the id of the run now holding the thread, which the caller must enqueue, or ''.
redis.call('ZREM', KEYS[2], ARGV[1])
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then
  return ''
end
local oldest = redis.call('ZPOPMIN', KEYS[2])
if oldest[1] then
  redis.call('SET', KEYS[1], oldest[1])
  return oldest[1]
end
redis.call('DEL', KEYS[1])
return ''
