-- Token bucket against one limit: the hot path of `hit`, without the driver's
-- tables and loops (3 commands: TIME, GET, SET or DEL). The same arithmetic as
-- token_bucket.lua + driver.lua and as token_bucket_check / _describe /
-- evaluate in _core.py; the differential tests hold all of them to the core.
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
local stored_tokens, stored_last = 0, 0
local tokens, last = b, now
local raw = redis.call('GET', key)
if raw then
  local st, sl = string.match(raw, '^(%S+) (%S+)$')
  stored_tokens, stored_last = tonumber(st), tonumber(sl)
  tokens, last = stored_tokens, stored_last
  if now > last then
    tokens = math.min(b, tokens + (now - last) * (a / p))
    last = now
  end
end
local allowed = tokens >= cost
local retry_after = 0
if not allowed then
  -- The first whole microsecond at which the stored bucket holds `cost` tokens.
  local rate = a / p
  local ready = stored_last + math.ceil((cost - stored_tokens) / rate)
  local steps = 0
  while stored_tokens + (ready - stored_last) * rate < cost and steps < 8 do
    ready = ready + 1
    steps = steps + 1
  end
  steps = 0
  while ready - 1 > stored_last and stored_tokens + (ready - 1 - stored_last) * rate >= cost
    and steps < 8 do
    ready = ready - 1
    steps = steps + 1
  end
  retry_after = ready - now
end
local commit = ARGV[4] == '1' and (allowed or ARGV[3] == '1')
if commit then tokens = tokens - cost end
local remaining = math.max(math.floor(tokens), 0)
local reset_after = 0
if tokens < b then reset_after = (b - tokens) / (a / p) end
if commit then
  if reset_after <= 0 then
    redis.call('DEL', key)
  else
    local ttl = math.ceil(reset_after / 1000) + 1
    if ttl < ttl_floor then ttl = ttl_floor end
    redis.call('SET', key, string.format('%.17g %d', tokens, last), 'PX', string.format('%d', ttl))
  end
end
if allowed then return {remaining, math.ceil(reset_after)} end
return {remaining, math.ceil(reset_after), math.ceil(retry_after)}
