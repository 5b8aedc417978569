-- Charge a running run's token usage so far against the tenant's budget: the part above what
-- the run has already charged (its reservation first) is added to the period's counter.
-- KEYS[1]  reservations, run id → '<period>|<tokens>'     (RedisKeys.tenant_reservations)
-- KEYS[2]  tokens charged in the run's budget period       (RedisKeys.tenant_budget)
-- KEYS[3]  limits last applied (hash)                      (RedisKeys.tenant_limits)
-- ARGV[1]  run id
-- ARGV[2]  tokens the run has used so far
-- ARGV[3]  the budget period KEYS[2] belongs to
-- Returns {ok, charged in the period, budget (0: none)}; ok is 0 when the period's counter
-- is over the budget: the run must stop.
local entry = redis.call('HGET', KEYS[1], ARGV[1])
local budget = tonumber(redis.call('HGET', KEYS[3], 'token_budget') or '0')
if not entry then
  return {1, 0, budget}
end
local sep = string.find(entry, '|', 1, true)
local period, held = string.sub(entry, 1, sep - 1), tonumber(string.sub(entry, sep + 1))
local used = tonumber(ARGV[2])
if period ~= ARGV[3] then
  return {1, 0, budget}
end
if used > held then
  redis.call('INCRBY', KEYS[2], used - held)
  redis.call('HSET', KEYS[1], ARGV[1], period .. '|' .. used)
end
local charged = tonumber(redis.call('GET', KEYS[2]) or '0')
if budget > 0 and charged > budget then
  return {0, charged, budget}
end
return {1, charged, budget}
