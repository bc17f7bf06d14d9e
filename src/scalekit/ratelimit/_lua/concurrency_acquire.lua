-- Concurrency limiter: a sorted set of lease id -> expiry (microseconds).
-- Expired leases (holder died) are dropped first. Mirrors concurrency_acquire in _core.py.
-- KEYS[1]: the lease set. ARGV: now ('' = server TIME), limit, lease (us), lease id.
local function fmt(x) return string.format('%.17g', x) end
local now
local ttl_floor = 0
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
  ttl_floor = 86400000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local key = KEYS[1]
local limit = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, fmt(now + lease), ARGV[4])
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local ttl = math.ceil((tonumber(last[2]) - now) / 1000) + 1
  if ttl < ttl_floor then ttl = ttl_floor end
  redis.call('PEXPIRE', key, string.format('%d', ttl))
  return {1, count + 1, '0'}
end
local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, count, fmt(tonumber(first[2]) - now)}
