-- Sliding window log (exact): a list of the timestamps of the last `amount`
-- admitted units, newest first. Mirrors sliding_log_check / sliding_log_describe.
local function rl_load(key)
  return key
end

local function clamp(key, now)
  local head = redis.call('LINDEX', key, 0)
  if head then
    head = tonumber(head)
    if head > now then return head end
  end
  return now
end

local function rl_check(key, now, a, p, b, cost)
  now = clamp(key, now)
  local cutoff = now - p
  local entry = redis.call('LINDEX', key, string.format('%d', a - cost))
  local new = {now, cost}
  if entry then
    entry = tonumber(entry)
    if entry > cutoff then return false, entry - cutoff, new end
  end
  return true, 0, new
end

local function rl_apply(key, new, a, p, b)
  local stamp = string.format('%d', new[1])
  local left = new[2]
  while left > 0 do
    local batch = math.min(left, 1000)
    local args = {}
    for j = 1, batch do args[j] = stamp end
    redis.call('LPUSH', key, unpack(args))
    left = left - batch
  end
  redis.call('LTRIM', key, 0, string.format('%d', a - 1))
  return key
end

local function rl_describe(key, now, a, p, b)
  now = clamp(key, now)
  local cutoff = now - p
  local low, high = 0, redis.call('LLEN', key)
  while low < high do
    local mid = math.floor((low + high) / 2)
    if tonumber(redis.call('LINDEX', key, mid)) > cutoff then low = mid + 1 else high = mid end
  end
  if low == 0 then return a, 0 end
  local head = tonumber(redis.call('LINDEX', key, 0))
  return math.max(a - low, 0), head + p - now
end

local function rl_persist(key, final, ttl)
  redis.call('PEXPIRE', key, ttl)
end
