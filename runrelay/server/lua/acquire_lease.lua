-- Take a run's lease unless another holder's is alive, with a new fencing token.
-- KEYS[1]  the run's fence counter (RedisKeys.fence)
-- KEYS[2]  the run's lease (RedisKeys.lease)
-- ARGV[1]  random part of the token (unique even if Redis lost the counter)
-- ARGV[2]  lease TTL, ms
-- ARGV[3]  fence counter TTL, s
-- Returns the token when taken, false while another lease is alive (the counter still moves:
-- a token is never handed out twice).
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local token = count .. '.' .. ARGV[1]
if redis.call('SET', KEYS[2], token, 'NX', 'PX', ARGV[2]) then
  return token
end
return false
