-- Extend a live lease; returns 0 if it has expired or was released.
-- KEYS[1]: the lease set. ARGV: now ('' = server TIME), lease (us), lease id.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local key = KEYS[1]
local score = redis.call('ZSCORE', key, ARGV[3])
if (not score) or tonumber(score) <= now then return 0 end
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', key, string.format('%.17g', expiry), ARGV[3])
local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', key, string.format('%d', math.ceil((tonumber(last[2]) - now) / 1000) + 1))
return 1
