-- Retry budget shared across processes: one hash per budget.
--
-- Fields "d:<bucket>" and "w:<bucket>" count deposits (first attempts) and
-- withdrawals (retries) per time bucket. The balance is
--     reserve + ratio * deposits - withdrawals
-- over the last `buckets` buckets; a withdrawal is granted when it is >= 1.
-- Deposits and the withdrawal happen in this one script, so concurrent
-- processes can never overdraw the budget together.
--
-- KEYS[1]  the budget's hash
-- ARGV[1]  now in milliseconds, or "" to use the server's clock (TIME)
-- ARGV[2]  bucket width in milliseconds
-- ARGV[3]  number of buckets in the window
-- ARGV[4]  deposits to add (>= 0)
-- ARGV[5]  "1" to try to withdraw one retry, "0" to only deposit
-- ARGV[6]  ratio: balance added per deposit
-- ARGV[7]  reserve: min_per_second * window
-- ARGV[8]  key expiry in milliseconds
-- Returns {granted (0/1), balance after the call (string)}.
if redis.replicate_commands then
  redis.replicate_commands()
end
local key = KEYS[1]
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local width = tonumber(ARGV[2])
local buckets = tonumber(ARGV[3])
local current = math.floor(now / width)
local oldest = current - buckets + 1

local deposits = 0
local withdrawals = 0
local fields = redis.call('HGETALL', key)
for i = 1, #fields, 2 do
  local field = fields[i]
  local bucket = tonumber(string.sub(field, 3))
  if bucket == nil or bucket < oldest then
    redis.call('HDEL', key, field)
  elseif string.sub(field, 1, 1) == 'd' then
    deposits = deposits + tonumber(fields[i + 1])
  else
    withdrawals = withdrawals + tonumber(fields[i + 1])
  end
end

local add = tonumber(ARGV[4])
if add > 0 then
  redis.call('HINCRBY', key, 'd:' .. string.format('%d', current), add)
  deposits = deposits + add
end

local balance = tonumber(ARGV[7]) + tonumber(ARGV[6]) * deposits - withdrawals
local granted = 0
if ARGV[5] == '1' and balance >= 1 - 1e-9 then
  redis.call('HINCRBY', key, 'w:' .. string.format('%d', current), 1)
  granted = 1
  balance = balance - 1
end
redis.call('PEXPIRE', key, tonumber(ARGV[8]))
return {granted, tostring(balance)}
