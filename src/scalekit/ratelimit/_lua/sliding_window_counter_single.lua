-- Sliding window counter against one limit: the hot path of `hit`, without
-- the driver's tables and loops (3 commands: TIME, GET, SET or DEL). The same
-- arithmetic as sliding_window_counter.lua + driver.lua and as
-- sliding_counter_check / _describe / evaluate in _core.py; the differential
-- tests hold all of them to the core.
-- KEYS[1]: the state "window current previous". ARGV: as driver.lua, with one limit.
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
local current, previous = 0, 0
local raw = redis.call('GET', key)
if raw then
  local w, c, before = string.match(raw, '^(%S+) (%S+) (%S+)$')
  w, c, before = tonumber(w), tonumber(c), tonumber(before)
  if w == window then
    current = c
    previous = before
  elseif w == window - 1 then
    previous = c
  elseif w > window then
    window = w
    current = c
    previous = before
  end
end
local fraction = math.max((now - window * p) / p, 0)
local weight = previous * (1 - fraction) + current
local allowed = weight + cost <= a
local retry_after = 0
if not allowed then
  if current + cost <= a then
    local needed = 1 - (a - current - cost) / previous
    retry_after = (needed - fraction) * p
  else
    local needed = 1 - (a - cost) / current
    retry_after = (1 - fraction) * p + needed * p
  end
end
local commit = ARGV[4] == '1' and (allowed or ARGV[3] == '1')
if commit then current = current + cost end
weight = previous * (1 - fraction) + current
local remaining = math.max(math.floor(a - weight), 0)
local reset_after = 0
if current > 0 then
  reset_after = (window + 2) * p - now
elseif previous > 0 then
  reset_after = (window + 1) * p - now
end
if commit then
  if reset_after <= 0 then
    redis.call('DEL', key)
  else
    local ttl = math.ceil(reset_after / 1000) + 1
    if ttl < ttl_floor then ttl = ttl_floor end
    redis.call('SET', key, string.format('%d %d %d', window, current, previous), 'PX',
      string.format('%d', ttl))
  end
end
if allowed then return {remaining, math.ceil(reset_after)} end
return {remaining, math.ceil(reset_after), math.ceil(retry_after)}
