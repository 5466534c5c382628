-- moteur admission: every limit of every scope of one call, checked and charged atomically.
--
-- Rates (requests and tokens per minute) use GCRA: one key per limit holding the theoretical arrival
-- time (TAT, ms). It is exact (no window edges letting 2x through), O(1) in memory, and gives the
-- precise time at which a refused call would fit — the RetryInfo we answer with. A burst of a whole
-- minute's budget is allowed (tolerance = 60 s). Token reservations are settled later by moving the
-- TAT by the difference, which a sliding window could not do without keeping every request.
-- Quotas (tokens per day/month, cost per month) are counters that expire with their calendar period.
-- Concurrency is a sorted set of leases scored by expiry, so a crashed caller's slot frees itself.
--
-- KEYS, 6 per scope: req, tok, conc, day, month, cost
-- ARGV: op ("admit" | "settle"), n_scopes, tokens, lease_id, lease_ttl_ms, day_ttl_s, month_ttl_s, cost,
--       then 6 per scope: rpm, tpm, concurrency, tokens_day, tokens_month, cost_month
-- admit  -> {1, remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms}
--        or {0, scope_index, limit_name, retry_after_ms, limit_value}
-- settle (tokens = the difference to the reservation, may be negative; releases the lease)
--        -> {1, day_used, month_used, cost_used for each scope...}

local MINUTE = 60000
local EPSILON = 0.001  -- ms: float sums of 60000/n must not refuse the n-th call
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local op, n, tokens = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, lease_ttl = ARGV[4], tonumber(ARGV[5])
local day_ttl, month_ttl, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])

local function limits(i)
  local a = 9 + i * 6
  return tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
         tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
end

local function tat_of(key)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  return tat
end

local function counter(key)
  return tonumber(redis.call('GET', key) or 0)
end

if op == 'settle' then
  local used = {1}
  for i = 0, n - 1 do
    local k = i * 6
    local rpm, tpm, conc, qday, qmonth, qcost = limits(i)
    if tpm > 0 and tokens ~= 0 then
      local tat = tat_of(KEYS[k + 2]) + tokens * MINUTE / tpm
      if tat > now then redis.call('SET', KEYS[k + 2], tat, 'PX', math.ceil(tat - now) + 1000)
      else redis.call('DEL', KEYS[k + 2]) end
    end
    redis.call('ZREM', KEYS[k + 3], lease)
    local day, month, spent = counter(KEYS[k + 4]), counter(KEYS[k + 5]), counter(KEYS[k + 6])
    if qday > 0 and tokens ~= 0 then day = redis.call('INCRBY', KEYS[k + 4], tokens) end
    if qmonth > 0 and tokens ~= 0 then month = redis.call('INCRBY', KEYS[k + 5], tokens) end
    if qcost > 0 and cost > 0 then
      spent = redis.call('INCRBY', KEYS[k + 6], cost)
      redis.call('EXPIRE', KEYS[k + 6], month_ttl)
    end
    table.insert(used, day); table.insert(used, month); table.insert(used, spent)
  end
  return used
end

-- admit, pass 1: check every limit without charging anything
local remaining_req, remaining_tok, reset_req, reset_tok = -1, -1, 0, 0
local req_tat, tok_tat = {}, {}
for i = 0, n - 1 do
  local k = i * 6
  local rpm, tpm, conc, qday, qmonth, qcost = limits(i)
  if rpm > 0 then
    local interval = MINUTE / rpm
    local tat = tat_of(KEYS[k + 1]) + interval
    if tat - now > MINUTE + EPSILON then return {0, i, 'requests_per_minute', math.ceil(tat - now - MINUTE), rpm} end
    req_tat[i] = tat
    local left = math.floor((MINUTE - (tat - now)) / interval + EPSILON)
    if remaining_req < 0 or left < remaining_req then remaining_req = left; reset_req = tat - now end
  end
  if tpm > 0 and tokens > 0 then
    if tokens > tpm then return {0, i, 'tokens_per_minute', -1, tpm} end
    local interval = MINUTE / tpm
    local tat = tat_of(KEYS[k + 2]) + tokens * interval
    if tat - now > MINUTE + EPSILON then return {0, i, 'tokens_per_minute', math.ceil(tat - now - MINUTE), tpm} end
    tok_tat[i] = tat
    local left = math.floor((MINUTE - (tat - now)) / interval + EPSILON)
    if remaining_tok < 0 or left < remaining_tok then remaining_tok = left; reset_tok = tat - now end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then
      local oldest = redis.call('ZRANGE', KEYS[k + 3], 0, 0, 'WITHSCORES')
      return {0, i, 'concurrent_requests', math.min(tonumber(oldest[2]) - now, 1000), conc}
    end
  end
  if qday > 0 and counter(KEYS[k + 4]) + tokens > qday then
    return {0, i, 'tokens_per_day', day_ttl * 1000, qday}
  end
  if qmonth > 0 and counter(KEYS[k + 5]) + tokens > qmonth then
    return {0, i, 'tokens_per_month', month_ttl * 1000, qmonth}
  end
  if qcost > 0 and counter(KEYS[k + 6]) >= qcost then
    return {0, i, 'cost_micro_usd_per_month', month_ttl * 1000, qcost}
  end
end

-- pass 2: charge every limit
for i = 0, n - 1 do
  local k = i * 6
  local rpm, tpm, conc, qday, qmonth, qcost = limits(i)
  if req_tat[i] then redis.call('SET', KEYS[k + 1], req_tat[i], 'PX', math.ceil(req_tat[i] - now) + 1000) end
  if tok_tat[i] then redis.call('SET', KEYS[k + 2], tok_tat[i], 'PX', math.ceil(tok_tat[i] - now) + 1000) end
  if conc > 0 then redis.call('ZADD', KEYS[k + 3], now + lease_ttl, lease); redis.call('PEXPIRE', KEYS[k + 3], lease_ttl) end
  if qday > 0 and tokens > 0 then redis.call('INCRBY', KEYS[k + 4], tokens); redis.call('EXPIRE', KEYS[k + 4], day_ttl) end
  if qmonth > 0 and tokens > 0 then redis.call('INCRBY', KEYS[k + 5], tokens); redis.call('EXPIRE', KEYS[k + 5], month_ttl) end
end
return {1, remaining_req, remaining_tok, math.ceil(reset_req), math.ceil(reset_tok)}
