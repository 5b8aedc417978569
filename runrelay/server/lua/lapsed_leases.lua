-- Which of the runs the database says are running have no lease in Redis (worker/sweeper.py):
-- their worker died, or handed them back.
-- KEYS[1..n]  the runs' leases (RedisKeys.lease)
-- ARGV        none
-- Returns the positions (1-based) of the keys that do not exist: one call and a small reply per
-- page of runs, where an EXISTS each in a pipeline cost the sweeper's worker ~40 µs per run.
local lapsed = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 0 then
    lapsed[#lapsed + 1] = i
  end
end
return lapsed
