-- Which of the runs a worker process holds have a cancel request (worker/control.py).
-- KEYS[1..n]  the runs' cancel flags (RedisKeys.cancel)
-- ARGV        none
-- Returns the positions (1-based) of the keys that exist: one small reply for any n, where n
-- EXISTS in a pipeline cost the worker ~15x the CPU to send and parse.
local flagged = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    flagged[#flagged + 1] = i
  end
end
return flagged
