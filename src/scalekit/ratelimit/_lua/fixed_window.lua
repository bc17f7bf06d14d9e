-- Fixed window: "window count 0". Mirrors fixed_window_check / fixed_window_describe.
local function rl_load(key)
  local raw = redis.call('GET', key)
  if not raw then return false end
  local w, c, z = string.match(raw, '^(%S+) (%S+) (%S+)$')
  return {tonumber(w), tonumber(c), tonumber(z)}
end

local function fixed(state, now, p)
  local window = math.floor(now / p)
  local count = 0
  if state then
    if state[1] == window then
      count = state[2]
    elseif state[1] > window then
      window = state[1]
      count = state[2]
    end
  end
  return window, count
end

local function rl_check(state, now, a, p, b, cost)
  local window, count = fixed(state, now, p)
  local new = {window, count + cost, 0}
  if count + cost <= a then return true, 0, new end
  return false, (window + 1) * p - now, new
end

local function rl_apply(key, new, a, p, b)
  return new
end

local function rl_describe(state, now, a, p, b)
  local window, count = fixed(state, now, p)
  if count <= 0 then return a, 0 end
  return math.max(a - count, 0), (window + 1) * p - now
end

local function rl_persist(key, final, ttl)
  redis.call('SET', key, string.format('%d %d 0', final[1], final[2]), 'PX', ttl)
end
