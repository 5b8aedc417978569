-- Admit one run for a tenant, or say which limit refuses it; on refusal nothing is written
-- (only expired slots are pruned). Checks, in order: request rate (GCRA), token budget,
-- concurrency, then the tenant's pending queue.
-- KEYS[1]  GCRA state: theoretical arrival time, ms     (RedisKeys.tenant_rate)
-- KEYS[2]  concurrency slots, run id → expiry ms         (RedisKeys.tenant_slots)
-- KEYS[3]  the tenant's pending queue (list of run ids)  (RedisKeys.tenant_pending)
-- KEYS[4]  limits last applied (hash)                     (RedisKeys.tenant_limits)
-- KEYS[5]  tokens charged this budget period              (RedisKeys.tenant_budget)
-- KEYS[6]  reservations, run id → '<period>|<tokens>'     (RedisKeys.tenant_reservations)
-- KEYS[7]  tenants with pending runs (set)                (RedisKeys.pending_tenants)
-- KEYS[8]  every tenant seen (set)                        (RedisKeys.quota_tenants)
-- KEYS[9]  runs sent to Celery, not started yet (zset)    (RedisKeys.dispatching)
-- ARGV[1]  tenant id
-- ARGV[2]  run id
-- ARGV[3]  requests per minute (0: no limit); the burst is one minute's worth
-- ARGV[4]  max concurrent runs (>= 1)
-- ARGV[5]  max queued runs (0: no queueing, over the concurrency cap is a refusal)
-- ARGV[6]  token budget of the period (0: no limit)
-- ARGV[7]  tokens to reserve for the run
-- ARGV[8]  budget period id (e.g. 2026-11)
-- ARGV[9]  seconds left in the budget period (the budget key's TTL is that plus a day)
-- ARGV[10] dispatch timeout, ms: a dispatched run not started by then is sent again
-- ARGV[11] Retry-After (s) for concurrency_limit and queue_full
-- Time is Redis's own clock (TIME), the one clock every shim and worker shares.
-- Returns {outcome, code, limit, remaining, reset_s}: outcome 'dispatch' (a slot is taken:
-- send the task), 'queue' (in the pending queue) or 'reject' (code names the limit; reset_s is
-- the Retry-After). On admission limit/remaining/reset_s describe the request rate.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tenant, run = ARGV[1], ARGV[2]
local rpm, max_running, max_queued = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local budget, reserve = tonumber(ARGV[6]), tonumber(ARGV[7])
local dispatch_ms, retry_s = tonumber(ARGV[10]), tonumber(ARGV[11])

-- Request rate: GCRA with emission interval T and a burst of `rpm` requests.
local new_tat, rate_remaining, rate_reset = 0, -1, 0
if rpm > 0 then
  local interval = 60000 / rpm
  local tolerance = interval * (rpm - 1)
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  if tat - now > tolerance then
    return {'reject', 'rate_limited', rpm, 0, math.ceil((tat - now - tolerance) / 1000)}
  end
  new_tat = tat + interval
  rate_remaining = math.floor((interval * rpm - (new_tat - now)) / interval)
  rate_reset = math.ceil((new_tat - now) / 1000)
end

-- Token budget: settled usage plus the reservations of unfinished runs.
local charged = tonumber(redis.call('GET', KEYS[5]) or '0')
if budget > 0 and charged + reserve > budget then
  return {'reject', 'token_budget_exhausted', budget, math.max(0, budget - charged),
          tonumber(ARGV[9])}
end

-- Concurrency and the pending queue. Slots whose lease expired (a dead worker) are free again.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local running = redis.call('ZCARD', KEYS[2])
local queued = redis.call('LLEN', KEYS[3])
local outcome
if running < max_running and queued == 0 then
  outcome = 'dispatch'
elseif queued < max_queued then
  outcome = 'queue'
elseif max_queued == 0 then
  return {'reject', 'concurrency_limit', max_running, 0, retry_s}
else
  return {'reject', 'queue_full', max_queued, 0, retry_s}
end

-- Admitted: record it all.
if rpm > 0 then
  redis.call('SET', KEYS[1], tostring(math.ceil(new_tat)), 'PX', math.ceil(new_tat - now) + 1000)
end
redis.call('INCRBY', KEYS[5], reserve)
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[9]) + 86400)
redis.call('HSET', KEYS[6], run, ARGV[8] .. '|' .. reserve)
redis.call('HSET', KEYS[4], 'max_concurrent_runs', max_running, 'token_budget', budget)
redis.call('SADD', KEYS[8], tenant)
if outcome == 'dispatch' then
  redis.call('ZADD', KEYS[2], now + 2 * dispatch_ms, run)
  redis.call('ZADD', KEYS[9], now + dispatch_ms, tenant .. ' ' .. run)
else
  redis.call('RPUSH', KEYS[3], run)
  redis.call('SADD', KEYS[7], tenant)
end
return {outcome, '', rpm, rate_remaining, rate_reset}
