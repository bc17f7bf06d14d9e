-- GCRA: the state is the theoretical arrival time "tat fraction" (whole
-- microseconds plus a fraction, for sub-microsecond precision).
-- Mirrors _gcra / gcra_check / gcra_describe in _core.py line for line.
local function rl_load(key)
  local raw = redis.call('GET', key)
  if not raw then return false end
  local tat, fraction = string.match(raw, '^(%S+) (%S+)$')
  return {tonumber(tat), tonumber(fraction)}
end

local function gcra(state, now)
  if state then
    local tat, fraction = state[1], state[2]
    local debt = (tat - now) + fraction
    if debt > 0 then return tat, fraction, debt end
  end
  return now, 0, 0
end

local function rl_check(state, now, a, p, b, cost)
  local interval = p / a
  local tau = interval * b
  local slack = interval * 1e-9
  local tat, fraction, debt = gcra(state, now)
  local ahead = debt + cost * interval
  local total = fraction + cost * interval
  local whole = math.floor(total)
  local new = {tat + whole, total - whole}
  if ahead <= tau + slack then return true, 0, new end
  return false, ahead - tau, new
end

local function rl_apply(key, new, a, p, b)
  return new
end

local function rl_describe(state, now, a, p, b)
  local interval = p / a
  local tau = interval * b
  local slack = interval * 1e-9
  local _tat, _fraction, debt = gcra(state, now)
  -- The division's rounding can be one off: settle on the count the check agrees with.
  local remaining = math.max(math.floor((tau - debt) / interval), 0)
  local steps = 0
  while remaining > 0 and debt + remaining * interval > tau + slack and steps < 4 do
    remaining = remaining - 1
    steps = steps + 1
  end
  steps = 0
  while debt + (remaining + 1) * interval <= tau + slack and steps < 4 do
    remaining = remaining + 1
    steps = steps + 1
  end
  return remaining, debt
end

local function rl_persist(key, final, ttl)
  redis.call('SET', key, string.format('%d %.17g', final[1], final[2]), 'PX', ttl)
end
