-- GCRA against one limit: the hot path of `hit`, without the driver's tables
-- and loops (3 commands: TIME, GET, SET or DEL). The same arithmetic as
-- gcra.lua + driver.lua and as gcra_check / gcra_describe / evaluate in
-- _core.py; the differential tests hold all of them to the core.
-- KEYS[1]: the state. ARGV: as driver.lua, with one limit.
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
local a, p, b = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local interval = p / a
local tau = interval * b
local slack = interval * 1e-9
local tat, fraction, debt = now, 0, 0
local raw = redis.call('GET', key)
if raw then
  local t, f = string.match(raw, '^(%S+) (%S+)$')
  t, f = tonumber(t), tonumber(f)
  local d = (t - now) + f
  if d > 0 then tat, fraction, debt = t, f, d end
end
local ahead = debt + cost * interval
local allowed = ahead <= tau + slack
local commit = ARGV[4] == '1' and (allowed or ARGV[3] == '1')
if commit then
  local total = fraction + cost * interval
  local whole = math.floor(total)
  tat, fraction = tat + whole, total - whole
  debt = (tat - now) + fraction
  if debt <= 0 then debt = 0 end
end
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
if commit then
  if debt <= 0 then
    redis.call('DEL', key)
  else
    local ttl = math.ceil(debt / 1000) + 1
    if ttl < ttl_floor then ttl = ttl_floor end
    redis.call('SET', key, string.format('%d %.17g', tat, fraction), 'PX', string.format('%d', ttl))
  end
end
if allowed then return {remaining, math.ceil(debt)} end
return {remaining, math.ceil(debt), math.ceil(ahead - tau)}
