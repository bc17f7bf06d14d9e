-- Sliding window counter (Cloudflare): "window current previous".
-- Mirrors sliding_counter_check / sliding_counter_describe in _core.py.
local function rl_load(key)
  local raw = redis.call('GET', key)
  if not raw then return false end
  local w, c, prev = string.match(raw, '^(%S+) (%S+) (%S+)$')
  return {tonumber(w), tonumber(c), tonumber(prev)}
end

local function windows(state, now, p)
  local window = math.floor(now / p)
  local current, previous = 0, 0
  if state then
    local stored, count, before = state[1], state[2], state[3]
    if stored == window then
      current = count
      previous = before
    elseif stored == window - 1 then
      previous = count
    elseif stored > window then
      window = stored
      current = count
      previous = before
    end
  end
  local fraction = math.max((now - window * p) / p, 0)
  return window, current, previous, fraction
end

local function rl_check(state, now, a, p, b, cost)
  local window, current, previous, fraction = windows(state, now, p)
  local weight = previous * (1 - fraction) + current
  local new = {window, current + cost, previous}
  if weight + cost <= a then return true, 0, new end
  local retry_after
  if current + cost <= a then
    local needed = 1 - (a - current - cost) / previous
    retry_after = (needed - fraction) * p
  else
    local needed = 1 - (a - cost) / current
    retry_after = (1 - fraction) * p + needed * p
  end
  return false, retry_after, new
end

local function rl_apply(key, new, a, p, b)
  return new
end

local function rl_describe(state, now, a, p, b)
  local window, current, previous, fraction = windows(state, now, p)
  local weight = previous * (1 - fraction) + current
  local remaining = math.max(math.floor(a - weight), 0)
  if current > 0 then return remaining, (window + 2) * p - now end
  if previous > 0 then return remaining, (window + 1) * p - now end
  return remaining, 0
end

local function rl_persist(key, final, ttl)
  redis.call('SET', key, string.format('%d %d %d', final[1], final[2], final[3]), 'PX', ttl)
end
