-- scalekit circuit breaker: the shared state machine, one atomic step per call.
--
-- The same table as scalekit/breaker/_core.py (CLOSED -trip-> OPEN
-- -open_elapsed-> HALF_OPEN -probes_passed-> CLOSED, -probe_failed-> OPEN,
-- plus manual open/close/force_open/disable), with Redis TIME in
-- milliseconds as the clock so that every process agrees on it.
--
-- KEYS[1]  hash  state: state gen open_until openings consec psucc next_probe wn wf ws b<i><e|c|f|s>
-- KEYS[2]  zset  half-open probes: member = probe id, score = expiry (ms)
-- KEYS[3]  list  count window: outcome codes, newest first (bit 0 failure, bit 1 slow)
-- All three share one hash tag, so the script runs on Redis Cluster.
--
-- ARGV: op, fail_max, failure_rate, slow_call_rate, window, window_ms, buckets,
--       min_calls, open durations (ms, comma separated, by opening number),
--       half_open_max_calls, success_threshold, probe_timeout_ms,
--       flush_gen, flush_fast, flush_slow, arg, probe, outcome, slow, ttl_ms
-- op: "acquire" | "record" (arg = ticket generation) | "set" (arg = target state) | "read"
-- Reply: {state, gen, probe_id, retry_ms (-1: forced open), openings,
--         old_state ('' if unchanged), trigger, reason}

local H, P, L = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local fail_max = tonumber(ARGV[2])
local failure_rate = tonumber(ARGV[3])
local slow_rate = tonumber(ARGV[4])
local wcount = tonumber(ARGV[5])
local wms = tonumber(ARGV[6])
local nb = tonumber(ARGV[7])
local min_calls = tonumber(ARGV[8])
local durations = {}
for d in string.gmatch(ARGV[9], '[^,]+') do durations[#durations + 1] = tonumber(d) end
local half_open_max = tonumber(ARGV[10])
local success_threshold = tonumber(ARGV[11])
local probe_timeout = tonumber(ARGV[12])
local flush_gen = tonumber(ARGV[13])
local flush_fast = tonumber(ARGV[14])
local flush_slow = tonumber(ARGV[15])
local arg = ARGV[16]
local probe = tonumber(ARGV[17])
local outcome = tonumber(ARGV[18])
local slow = tonumber(ARGV[19])
local ttl = tonumber(ARGV[20])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local f = redis.call('HMGET', H, 'state', 'gen', 'open_until', 'openings', 'consec', 'psucc',
                     'wn', 'wf', 'ws')
local state = f[1] or 'closed'
local gen = tonumber(f[2] or '0')
local open_until = tonumber(f[3] or '0')
local openings = tonumber(f[4] or '0')
local consec = tonumber(f[5] or '0')
local psucc = tonumber(f[6] or '0')
local wn, wf, ws = tonumber(f[7] or '0'), tonumber(f[8] or '0'), tonumber(f[9] or '0')
local start_state = state
local trigger, reason = '', ''
local dirty = false
local has_window = failure_rate > 0 or slow_rate > 0

local function win_reset()
  redis.call('DEL', L)
  wn, wf, ws = 0, 0, 0
  if wms > 0 then
    for i = 0, nb - 1 do
      redis.call('HDEL', H, 'b' .. i .. 'e', 'b' .. i .. 'c', 'b' .. i .. 'f', 'b' .. i .. 's')
    end
  end
end

local function win_add(code, n)
  if n <= 0 then return end
  local fails = code % 2
  local slows = math.floor(code / 2)
  if wms > 0 then
    local epoch = math.floor(now / (wms / nb))
    local slot = epoch % nb
    local e = tonumber(redis.call('HGET', H, 'b' .. slot .. 'e') or '-1')
    if e ~= epoch then
      redis.call('HSET', H, 'b' .. slot .. 'e', epoch, 'b' .. slot .. 'c', 0,
                 'b' .. slot .. 'f', 0, 'b' .. slot .. 's', 0)
    end
    redis.call('HINCRBY', H, 'b' .. slot .. 'c', n)
    if fails > 0 then redis.call('HINCRBY', H, 'b' .. slot .. 'f', n) end
    if slows > 0 then redis.call('HINCRBY', H, 'b' .. slot .. 's', n) end
    return
  end
  if n > wcount then n = wcount end
  for _ = 1, n do
    redis.call('LPUSH', L, code)
  end
  wn = wn + n
  wf = wf + fails * n
  ws = ws + slows * n
  while wn > wcount do
    local old = tonumber(redis.call('RPOP', L))
    wn = wn - 1
    wf = wf - old % 2
    ws = ws - math.floor(old / 2)
  end
end

local function win_totals()
  if wms == 0 then return wn, wf, ws end
  local epoch = math.floor(now / (wms / nb))
  local n, fl, sl = 0, 0, 0
  for i = 0, nb - 1 do
    local b = redis.call('HMGET', H, 'b' .. i .. 'e', 'b' .. i .. 'c', 'b' .. i .. 'f', 'b' .. i .. 's')
    if b[1] and tonumber(b[1]) > epoch - nb then
      n = n + tonumber(b[2]); fl = fl + tonumber(b[3]); sl = sl + tonumber(b[4])
    end
  end
  return n, fl, sl
end

local function go(new, why_trigger, why)
  gen = gen + 1
  redis.call('DEL', P)
  psucc = 0
  if new == 'open' then
    openings = openings + 1
    local k = openings
    if k > #durations then k = #durations end
    open_until = now + durations[k]
  elseif new == 'closed' then
    consec = 0
    openings = 0
    win_reset()
  elseif new == 'disabled' then
    consec = 0
    win_reset()
  end
  state = new
  trigger = why_trigger
  reason = why
  dirty = true
end

local function evaluate()
  if not has_window then return end
  local n, fl, sl = win_totals()
  if n < min_calls then return end
  if failure_rate > 0 and fl >= failure_rate * n then
    go('open', 'trip', 'failure rate ' .. fl .. '/' .. n)
  elseif slow_rate > 0 and sl >= slow_rate * n then
    go('open', 'trip', 'slow-call rate ' .. sl .. '/' .. n)
  end
end

-- Successes this process counted locally since its last call, in one batch.
if flush_gen == gen and state == 'closed' and (flush_fast + flush_slow) > 0 then
  consec = 0
  dirty = true
  if has_window then
    win_add(0, flush_fast)
    win_add(2, flush_slow)
    evaluate()
  end
end

local probe_id = 0
local retry = 0

if op == 'acquire' then
  if state == 'open' then
    if now < open_until then
      retry = open_until - now
    else
      go('half_open', 'open_elapsed', 'open duration elapsed')
    end
  end
  if state == 'half_open' then
    redis.call('ZREMRANGEBYSCORE', P, '-inf', now)
    if redis.call('ZCARD', P) >= half_open_max then
      local first = redis.call('ZRANGE', P, 0, 0, 'WITHSCORES')
      retry = math.max(tonumber(first[2]) - now, 0)
      if retry == 0 then retry = 1 end
    else
      probe_id = redis.call('HINCRBY', H, 'next_probe', 1)
      redis.call('ZADD', P, now + probe_timeout, probe_id)
      dirty = true
    end
  elseif state == 'forced_open' then
    retry = -1
  end
elseif op == 'record' then
  if probe > 0 then
    local removed = redis.call('ZREM', P, probe)
    if removed == 1 and state == 'half_open' and outcome ~= 2 then
      if outcome == 1 or slow == 1 then
        local why = 'probe failed'
        if slow == 1 and outcome ~= 1 then why = 'slow probe' end
        go('open', 'probe_failed', why)
      else
        psucc = psucc + 1
        dirty = true
        if psucc >= success_threshold then
          go('closed', 'probes_passed', psucc .. ' probe(s) succeeded')
        end
      end
    end
  elseif tonumber(arg) == gen and state == 'closed' and outcome ~= 2 then
    dirty = true
    if outcome == 1 then
      consec = consec + 1
      if fail_max > 0 and consec >= fail_max then
        go('open', 'trip', consec .. ' consecutive failures')
      end
    else
      consec = 0
    end
    if state == 'closed' and has_window then
      win_add(outcome + 2 * slow, 1)
      evaluate()
    end
  end
elseif op == 'set' then
  local triggers = {open = 'manual_open', closed = 'manual_close',
                    forced_open = 'force_open', disabled = 'disable'}
  go(arg, triggers[arg], 'manual')
end

if state == 'open' and retry == 0 then retry = math.max(open_until - now, 1) end

if dirty then
  redis.call('HSET', H, 'state', state, 'gen', gen, 'open_until', open_until,
             'openings', openings, 'consec', consec, 'psucc', psucc,
             'wn', wn, 'wf', wf, 'ws', ws)
  -- Idle state expires after ttl, but never while the circuit is still open.
  if state == 'open' and open_until - now >= ttl then ttl = open_until - now + 1000 end
  redis.call('PEXPIRE', H, ttl)
  if redis.call('EXISTS', P) == 1 then redis.call('PEXPIRE', P, ttl) end
  if redis.call('EXISTS', L) == 1 then redis.call('PEXPIRE', L, ttl) end
end

local old = ''
if state ~= start_state then old = start_state end
return {state, gen, probe_id, retry, openings, old, trigger, reason}
