-- Token bucket: the state is "tokens last", refilled amount/period per microsecond.
-- Mirrors token_bucket_check / token_bucket_describe in _core.py line for line.
local function rl_load(key)
  local raw = redis.call('GET', key)
  if not raw then return false end
  local tokens, last = string.match(raw, '^(%S+) (%S+)$')
  return {tonumber(tokens), tonumber(last)}
end

local function bucket(state, now, a, p, b)
  if not state then return b, now end
  local tokens, last = state[1], state[2]
  if now > last then
    tokens = math.min(b, tokens + (now - last) * (a / p))
    last = now
  end
  return tokens, last
end

-- The first whole microsecond at which the stored bucket holds `cost` tokens
-- (mirrors _bucket_ready_at: nudged so that waiting retry_after is enough).
local function ready_at(state, a, p, cost)
  local tokens, last = 0, 0
  if state then tokens, last = state[1], state[2] end
  local rate = a / p
  local ready = last + math.ceil((cost - tokens) / rate)
  local steps = 0
  while tokens + (ready - last) * rate < cost and steps < 8 do
    ready = ready + 1
    steps = steps + 1
  end
  steps = 0
  while ready - 1 > last and tokens + (ready - 1 - last) * rate >= cost and steps < 8 do
    ready = ready - 1
    steps = steps + 1
  end
  return ready
end

local function rl_check(state, now, a, p, b, cost)
  local tokens, last = bucket(state, now, a, p, b)
  if tokens >= cost then return true, 0, {tokens - cost, last} end
  return false, ready_at(state, a, p, cost) - now, {tokens - cost, last}
end

local function rl_apply(key, new, a, p, b)
  return new
end

local function rl_describe(state, now, a, p, b)
  local tokens = bucket(state, now, a, p, b)
  local remaining = math.max(math.floor(tokens), 0)
  if tokens >= b then return remaining, 0 end
  return remaining, (b - tokens) / (a / p)
end

local function rl_persist(key, final, ttl)
  redis.call('SET', key, string.format('%.17g %d', final[1], final[2]), 'PX', ttl)
end
