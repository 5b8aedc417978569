-- Release an idempotency key, but only if it still leads to the given run (the request that
-- claimed it failed before its run was queued, so a retry may create the run afresh).
-- KEYS[1]  the idempotency key (RedisKeys.idempotency)
-- ARGV[1]  the run id the claim was made for
-- Returns 1 when released, 0 when the key is gone or leads elsewhere.
local value = redis.call('GET', KEYS[1])
if not value then
  return 0
end
local claim = cjson.decode(value)
if claim['run_id'] ~= ARGV[1] then
  return 0
end
return redis.call('DEL', KEYS[1])
