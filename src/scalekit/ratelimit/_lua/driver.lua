-- The driver: one hit against every limit in KEYS, atomically. Mirrors evaluate() in _core.py.
-- KEYS: one key per limit (all share one hash tag, so one cluster slot).
-- Needs Redis >= 5 (scripts replicate their effects, so TIME may precede writes).
-- ARGV: now ('' = the server's TIME), cost, consume_denied (0/1), write (0/1),
--       then amount, period (microseconds), capacity for each limit.
-- When a test passes `now`, keys live at least a day, so that real time
-- passing between calls cannot expire state that virtual time still needs.
local now
local ttl_floor = 0
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
  ttl_floor = 86400000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local cost = tonumber(ARGV[2])
local consume_denied = ARGV[3] == '1'
local write = ARGV[4] == '1'

local states, params, checks = {}, {}, {}
local allowed = true
for i = 1, #KEYS do
  local a = tonumber(ARGV[2 + 3 * i])
  local p = tonumber(ARGV[3 + 3 * i])
  local b = tonumber(ARGV[4 + 3 * i])
  params[i] = {a, p, b}
  states[i] = rl_load(KEYS[i])
  local ok, retry_after, new = rl_check(states[i], now, a, p, b, cost)
  checks[i] = {ok, retry_after, new}
  if not ok then allowed = false end
end

local commit = write and (allowed or consume_denied)
local index, best_remaining, best_reset, best_retry = -1, 0, 0, 0
for i = 1, #KEYS do
  local a, p, b = params[i][1], params[i][2], params[i][3]
  local final = states[i]
  if commit then final = rl_apply(KEYS[i], checks[i][3], a, p, b) end
  local remaining, reset_after = rl_describe(final, now, a, p, b)
  if commit then
    if reset_after <= 0 then
      -- the state is equivalent to no state at all
      redis.call('DEL', KEYS[i])
    else
      local ttl = math.ceil(reset_after / 1000) + 1
      if ttl < ttl_floor then ttl = ttl_floor end
      rl_persist(KEYS[i], final, string.format('%d', ttl))
    end
  end
  local better
  if allowed then
    better = index < 0 or remaining < best_remaining
  else
    better = (not checks[i][1]) and (index < 0 or checks[i][2] > best_retry)
  end
  if better then
    index = i - 1
    best_remaining, best_reset, best_retry = remaining, reset_after, checks[i][2]
  end
end
-- Whole numbers only (remaining is whole; times are rounded up to whole
-- microseconds): Redis turns them into integer replies, no formatting needed.
return {allowed and 1 or 0, index, best_remaining, math.ceil(best_reset), math.ceil(best_retry)}
