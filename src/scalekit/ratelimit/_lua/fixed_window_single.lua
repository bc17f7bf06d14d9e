-- Fixed window against one limit: the hot path of `hit`, without the driver's
-- tables and loops (3 commands: TIME, GET, SET or DEL). The same arithmetic as
-- fixed_window.lua + driver.lua and as fixed_window_check / _describe /
-- evaluate in _core.py; the differential tests hold all of them to the core.
-- KEYS[1]: the state "window count 0". ARGV: as driver.lua, with one limit.
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
local window = math.floor(now / p)
local count = 0
local raw = redis.call('GET', key)
if raw then
  local w, c = string.match(raw, '^(%S+) (%S+) (%S+)$')
  w, c = tonumber(w), tonumber(c)
  if w == window then
    count = c
  elseif w > window then
    window = w
    count = c
  end
end
local allowed = count + cost <= a
local commit = ARGV[4] == '1' and (allowed or ARGV[3] == '1')
if commit then count = count + cost end
local remaining, reset_after = a, 0
if count > 0 then
  remaining = math.max(a - count, 0)
  reset_after = (window + 1) * p - now
end
if commit then
  if reset_after <= 0 then
    redis.call('DEL', key)
  else
    local ttl = math.ceil(reset_after / 1000) + 1
    if ttl < ttl_floor then ttl = ttl_floor end
    redis.call('SET', key, string.format('%d %d 0', window, count), 'PX', string.format('%d', ttl))
  end
end
if allowed then return {remaining, math.ceil(reset_after)} end
return {remaining, math.ceil(reset_after), math.ceil((window + 1) * p - now)}
