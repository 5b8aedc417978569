-- Which of many keys exist: the cancel flags of the runs a worker process holds
-- (worker/control.py), the leases of the runs a sweeper's page says are running
-- (worker/sweeper.py).
-- KEYS[1..n]  the keys (RedisKeys.cancel, RedisKeys.lease)
-- ARGV        none
-- Returns the positions (1-based) of the keys that exist: one call for any n, where n EXISTS in
-- a pipeline cost the worker ~15x the CPU to send and parse.
local found = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    found[#found + 1] = i
  end
end
return found
