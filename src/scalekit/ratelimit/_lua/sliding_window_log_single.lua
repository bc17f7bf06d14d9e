-- Sliding window log against one limit: the hot path of `hit`, without the
-- driver's tables and loops, and reading the head of the log once (the generic
-- driver reads it again to describe). The same arithmetic as
-- sliding_window_log.lua + driver.lua and as sliding_log_check / _describe /
-- evaluate in _core.py; the differential tests hold all of them to the core.
-- KEYS[1]: the log. ARGV: as driver.lua, with one limit.
-- Reply: {remaining, reset_after} when allowed, plus retry_after when denied.
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
local cost = tonumber(ARGV[2])
local a, p = tonumber(ARGV[5]), tonumber(ARGV[6])
-- The store's clock never goes back here: time is at least the newest entry.
local head = redis.call('LINDEX', key, 0)
if head then
  head = tonumber(head)
  if head > now then now = head end
end
local cutoff = now - p
local allowed, retry_after = true, 0
local entry = redis.call('LINDEX', key, string.format('%d', a - cost))
if entry then
  entry = tonumber(entry)
  if entry > cutoff then
    allowed = false
    retry_after = entry - cutoff
  end
end
local commit = ARGV[4] == '1' and (allowed or ARGV[3] == '1')
if commit and cost > 0 then
  local stamp = string.format('%d', now)
  local left = cost
  while left > 0 do
    local batch = math.min(left, 1000)
    local args = {}
    for j = 1, batch do args[j] = stamp end
    redis.call('LPUSH', key, unpack(args))
    left = left - batch
  end
  redis.call('LTRIM', key, 0, string.format('%d', a - 1))
  head = tonumber(stamp)
elseif commit then
  redis.call('LTRIM', key, 0, string.format('%d', a - 1))
end
-- How many entries are newer than the cutoff (binary search, newest first).
local low, high = 0, redis.call('LLEN', key)
while low < high do
  local mid = math.floor((low + high) / 2)
  if tonumber(redis.call('LINDEX', key, mid)) > cutoff then low = mid + 1 else high = mid end
end
local remaining, reset_after = a, 0
if low > 0 then
  remaining = math.max(a - low, 0)
  reset_after = head + p - now
end
if commit then
  if reset_after <= 0 then
    redis.call('DEL', key)
  else
    local ttl = math.ceil(reset_after / 1000) + 1
    if ttl < ttl_floor then ttl = ttl_floor end
    redis.call('PEXPIRE', key, ttl)
  end
end
if allowed then return {remaining, math.ceil(reset_after)} end
return {remaining, math.ceil(reset_after), math.ceil(retry_after)}
