-- moteur admission: every limit of every scope of one call, checked and charged atomically.
--
-- Rates (requests and tokens per minute) use GCRA: one key per limit holding the theoretical arrival
-- time (TAT, ms). It is exact (no window edges letting 2x through), O(1) in memory, and gives the
-- precise time at which a refused call would fit — the RetryInfo we answer with. A burst of a whole
-- minute's budget is allowed (tolerance = 60 s). Token reservations are settled later by moving the
-- TAT by the difference, which a sliding window could not do without keeping every request.
-- Quotas (tokens per day/month, cost per day/month) are counters that expire with their calendar period.
-- A quota counter is created only by "seed", from the usage ledger: a missing one (new period, Redis
-- restarted without its data, failover, eviction) makes "admit" answer the miss and charge nothing; the
-- gateway reads the ledger and seeds it (SET NX: the first seeder wins, concurrent replicas never count twice),
-- then admits again. Each seeded counter has a marker holding when it was seeded (Redis time, us): a call
-- admitted before that reserved into a counter that is gone, so its settlement charges its real usage
-- instead of the difference to its reservation. Settling never creates a missing counter: the ledger
-- already holds that call, and the next seed reads it.
-- Concurrency is a sorted set of leases scored by expiry, renewed while the call runs ("renew"), so a
-- crashed gateway's slots free themselves within one lease. A lease is "<admitted at, ms>:<id>": a
-- refusal computes when the oldest call should end from the caller's typical call time.
--
-- KEYS, 11 per scope: req, tok, conc, day, month, cost_month, cost_day, then the seed markers of the four
--       quota counters (day, month, cost_month, cost_day)
-- ARGV: op ("admit" | "settle" | "renew" | "seed"), n_scopes, tokens, lease, lease_ttl_ms, day_ttl_s,
--       month_ttl_s, cost, typical_call_ms, admitted_us, real_tokens, then 7 per scope: rpm, tpm, concurrency,
--       tokens_day, tokens_month, cost_month, cost_day ("seed": the four quota values are what to seed each
--       counter with, -1 for a counter not to seed)
-- admit  -> {1, remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms, admitted_us}
--        or {0, scope_index, limit_name, retry_after_ms, limit_value,
--            remaining_requests, remaining_tokens, reset_requests_ms, reset_tokens_ms}
--        or {2, scope_index, counter, ...}: quota counters missing (counter 4 day, 5 month, 6 cost_month,
--            7 cost_day); nothing was charged
-- settle (tokens = the difference to the reservation, may be negative; real_tokens = the call's real usage;
--        admitted_us = the admission's Redis time; releases the lease)
--        -> {1, day_used, month_used, cost_month_used, cost_day_used for each scope...}
-- renew  -> {number of scopes whose lease was still held}
-- seed   -> {1 if this call seeded the counter, else 0: 4 per scope}

local MINUTE = 60000
local EPSILON = 0.001  -- ms: float sums of 60000/n must not refuse the n-th call
local PER_SCOPE = 11
local MARKER = 4  -- a quota counter's seed marker: its key's index + MARKER
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local op, n, tokens = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, lease_ttl = ARGV[4], tonumber(ARGV[5])
local day_ttl, month_ttl, cost = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local typical_call = tonumber(ARGV[9])
local admitted_us, real_tokens = tonumber(ARGV[10]), tonumber(ARGV[11])
local now_us = clock[1] .. string.format('%06d', tonumber(clock[2]))  -- a string: exact, unlike a float's text

local function limits(i)
  local a = 12 + i * 7
  return tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]),
         tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6])
end

local function tat_of(key)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  return tat
end

local function counter(key)
  return tonumber(redis.call('GET', key) or 0)
end

local function charge(key, amount, ttl)
  local total = redis.call('INCRBY', key, amount)
  redis.call('EXPIRE', key, ttl)
  return total
end

-- A quota's settlement: the difference to the reservation, or the real usage when the counter was seeded
-- after this call was admitted (its reservation went with the lost counter); nothing when it is missing.
local function settle_quota(key, reserved_delta, real)
  local value = redis.call('GET', KEYS[key])
  if not value then return 0 end
  local amount = reserved_delta
  if tonumber(redis.call('GET', KEYS[key + MARKER]) or 0) > admitted_us then amount = real end
  if amount == 0 then return tonumber(value) end
  return redis.call('INCRBY', KEYS[key], amount)
end

if op == 'seed' then
  local seeded = {}
  for i = 0, n - 1 do
    local k = i * PER_SCOPE
    local _, _, _, day, month, cost_month, cost_day = limits(i)
    local values, ttls = {day, month, cost_month, cost_day}, {day_ttl, month_ttl, month_ttl, day_ttl}
    for j = 1, 4 do
      local set = 0
      if values[j] >= 0 and redis.call('SET', KEYS[k + 3 + j], ARGV[12 + i * 7 + 2 + j], 'NX', 'EX', ttls[j]) then
        redis.call('SET', KEYS[k + 3 + j + MARKER], now_us, 'EX', ttls[j])
        set = 1
      end
      table.insert(seeded, set)
    end
  end
  return seeded
end

if op == 'renew' then
  local held = 0
  for i = 0, n - 1 do
    local k = i * PER_SCOPE
    held = held + redis.call('ZADD', KEYS[k + 3], 'XX', 'CH', now + lease_ttl, lease)
    redis.call('PEXPIRE', KEYS[k + 3], lease_ttl)
  end
  return {held}
end

if op == 'settle' then
  local used = {1}
  for i = 0, n - 1 do
    local k = i * PER_SCOPE
    local rpm, tpm, conc, qday, qmonth, qcost, qcostday = limits(i)
    if tpm > 0 and tokens ~= 0 then
      local tat = tat_of(KEYS[k + 2]) + tokens * MINUTE / tpm
      if tat > now then redis.call('SET', KEYS[k + 2], tat, 'PX', math.ceil(tat - now) + 1000)
      else redis.call('DEL', KEYS[k + 2]) end
    end
    redis.call('ZREM', KEYS[k + 3], lease)
    local day, month = counter(KEYS[k + 4]), counter(KEYS[k + 5])
    local spent, spent_today = counter(KEYS[k + 6]), counter(KEYS[k + 7])
    if qday > 0 then day = settle_quota(k + 4, tokens, real_tokens) end
    if qmonth > 0 then month = settle_quota(k + 5, tokens, real_tokens) end
    if qcost > 0 then spent = settle_quota(k + 6, cost, cost) end
    if qcostday > 0 then spent_today = settle_quota(k + 7, cost, cost) end
    table.insert(used, day); table.insert(used, month); table.insert(used, spent); table.insert(used, spent_today)
  end
  return used
end

-- When the oldest call holding a slot should end: its admission plus the typical call time (at least
-- 50 ms; a quarter of the typical time when it already ran longer than that).
local function slot_free_in(key)
  local oldest = nil
  for _, member in ipairs(redis.call('ZRANGE', key, 0, -1)) do
    local started = tonumber(string.match(member, '^(%d+):'))
    if started and (oldest == nil or started < oldest) then oldest = started end
  end
  local wait = typical_call / 4
  if oldest and oldest + typical_call > now then wait = oldest + typical_call - now end
  return math.max(50, math.min(math.ceil(wait), MINUTE))
end

-- admit, pass 1: check every limit without charging anything; the first refusal is kept, and the budget
-- is computed both as it would be after this call (admitted) and as it stands (refused)
local budget = {after = {-1, -1, 0, 0}, now = {-1, -1, 0, 0}}  -- remaining req, tok; reset req, tok (ms)
local function track(which, slot, tat, interval)
  local left = math.max(0, math.floor((MINUTE - (tat - now)) / interval + EPSILON))
  local b = budget[which]
  if b[slot] < 0 or left < b[slot] then b[slot] = left; b[slot + 2] = math.max(0, tat - now) end
end
local missing, used = {2}, {}  -- used: the quota counters' values, by key index
for i = 0, n - 1 do
  local k = i * PER_SCOPE
  local _, _, _, qday, qmonth, qcost, qcostday = limits(i)
  for j, quota in ipairs({qday, qmonth, qcost, qcostday}) do
    if quota > 0 then
      local value = redis.call('GET', KEYS[k + 3 + j])
      if value then used[k + 3 + j] = tonumber(value)
      else table.insert(missing, i); table.insert(missing, 3 + j) end
    end
  end
end
if #missing > 1 then return missing end

local req_tat, tok_tat = {}, {}
local refusal = nil
local function refuse(i, name, retry_ms, limit)
  if refusal == nil then refusal = {0, i, name, retry_ms, limit} end
end
for i = 0, n - 1 do
  local k = i * PER_SCOPE
  local rpm, tpm, conc, qday, qmonth, qcost, qcostday = limits(i)
  if rpm > 0 then
    local interval = MINUTE / rpm
    local before = tat_of(KEYS[k + 1])
    local tat = before + interval
    if tat - now > MINUTE + EPSILON then refuse(i, 'requests_per_minute', math.ceil(tat - now - MINUTE), rpm) end
    req_tat[i] = tat
    track('after', 1, tat, interval); track('now', 1, before, interval)
  end
  if tpm > 0 and tokens > 0 then
    local interval = MINUTE / tpm
    local before = tat_of(KEYS[k + 2])
    local tat = before + tokens * interval
    if tokens > tpm then refuse(i, 'tokens_per_minute', -1, tpm)
    elseif tat - now > MINUTE + EPSILON then refuse(i, 'tokens_per_minute', math.ceil(tat - now - MINUTE), tpm) end
    tok_tat[i] = tat
    track('after', 2, tat, interval); track('now', 2, before, interval)
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then
      refuse(i, 'concurrent_requests', slot_free_in(KEYS[k + 3]), conc)
    end
  end
  if qday > 0 and used[k + 4] + tokens > qday then refuse(i, 'tokens_per_day', day_ttl * 1000, qday) end
  if qmonth > 0 and used[k + 5] + tokens > qmonth then
    refuse(i, 'tokens_per_month', month_ttl * 1000, qmonth)
  end
  if qcost > 0 and used[k + 6] >= qcost then
    refuse(i, 'cost_micro_usd_per_month', month_ttl * 1000, qcost)
  end
  if qcostday > 0 and used[k + 7] >= qcostday then
    refuse(i, 'cost_micro_usd_per_day', day_ttl * 1000, qcostday)
  end
end
if refusal ~= nil then
  local b = budget.now
  table.insert(refusal, b[1]); table.insert(refusal, b[2])
  table.insert(refusal, math.ceil(b[3])); table.insert(refusal, math.ceil(b[4]))
  return refusal
end

-- pass 2: charge every limit
for i = 0, n - 1 do
  local k = i * PER_SCOPE
  local rpm, tpm, conc, qday, qmonth, qcost, qcostday = limits(i)
  if req_tat[i] then redis.call('SET', KEYS[k + 1], req_tat[i], 'PX', math.ceil(req_tat[i] - now) + 1000) end
  if tok_tat[i] then redis.call('SET', KEYS[k + 2], tok_tat[i], 'PX', math.ceil(tok_tat[i] - now) + 1000) end
  if conc > 0 then redis.call('ZADD', KEYS[k + 3], now + lease_ttl, lease); redis.call('PEXPIRE', KEYS[k + 3], lease_ttl) end
  if qday > 0 and tokens > 0 then charge(KEYS[k + 4], tokens, day_ttl) end
  if qmonth > 0 and tokens > 0 then charge(KEYS[k + 5], tokens, month_ttl) end
end
local b = budget.after
return {1, b[1], b[2], math.ceil(b[3]), math.ceil(b[4]), now_us}
