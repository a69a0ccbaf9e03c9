--- Retry policy: what to retry, and how long to wait before the next try.
--
-- Transport errors, timeouts, 429 and 5xx are retried for GET, PUT, PATCH
-- and DELETE. A POST is retried only when it certainly never reached the
-- server (a connect failure), unless the caller opted in (retry_post).
-- Waits are exponential with full jitter, capped by backoff_max, and a
-- Retry-After header (seconds or an HTTP date) is honoured. The whole retry
-- budget is capped by max_retry_time.
local core = require "postback.core"

local M = {}

local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, PATCH = true, DELETE = true }

--- Is this outcome worth another try? (resp or err from a transport)
function M.retryable(method, status, err, retry_post)
  local may_resend = IDEMPOTENT[method] or retry_post
  if err then
    if err.retryable == false then return false end
    if err.kind ~= "transport" and err.kind ~= "timeout" then return false end
    return may_resend or err.sent == false
  end
  if status == 429 or (status and status >= 500 and status <= 599) then
    return may_resend and true or false
  end
  return false
end

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6,
                 Jul = 7, Aug = 8, Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Days from 1970-01-01 to y-m-d (proleptic Gregorian), without os.time's
-- local-time zone.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

--- Seconds to wait from a Retry-After value (delta-seconds or IMF-fixdate),
-- or nil when it cannot be read.
function M.retry_after(value, now)
  if type(value) ~= "string" then return nil end
  local secs = value:match("^%s*(%d+)%s*$")
  if secs then return tonumber(secs) end
  local d, mon, y, hh, mm, ss = value:match("^%s*%a+,%s*(%d+)%s+(%a+)%s+(%d+)%s+(%d+):(%d+):(%d+)%s+GMT%s*$")
  if not d or not MONTHS[mon] then return nil end
  local t = days_from_civil(tonumber(y), MONTHS[mon], tonumber(d)) * 86400
    + tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
  local wait = t - (now or core.time())
  return wait > 0 and wait or 0
end

--- Wait before retry number `attempt` (1 = the first retry): full jitter.
function M.backoff(attempt, base, max)
  local cap = base * 2 ^ (attempt - 1)
  if cap > max then cap = max end
  return math.random() * cap
end

--- The delay before the next try, or nil when the budget is spent.
-- policy = {retries=, backoff_base=, backoff_max=, max_retry_time=,
-- retry_schedule=}; attempts = tries made so far; started = monotonic time
-- of the first try.
function M.next_delay(policy, attempts, started, retry_after)
  local delay = M.delay(policy, attempts, retry_after)
  if not delay then return nil end
  if policy.max_retry_time and core.now() + delay - started > policy.max_retry_time then return nil end
  return delay
end

--- The wait in seconds before retry number `attempt` (1 = the first
-- retry), or nil when the policy allows no more.
-- policy = {retry_schedule = {5, 300, 1800}} (the waits themselves, no retry
-- past the list's end), or {retries=, backoff_base=, backoff_max=}
-- (exponential backoff with full jitter). A Retry-After (seconds) longer
-- than the wait is honoured, up to policy.retry_after_max (default 3600).
function M.delay(policy, attempt, retry_after)
  local wait
  local schedule = policy.retry_schedule
  if schedule then
    wait = schedule[attempt]
    if wait == nil then return nil end
  else
    if attempt > (policy.retries or 0) then return nil end
    wait = M.backoff(attempt, policy.backoff_base or 0.5, policy.backoff_max or 30)
  end
  if retry_after and retry_after > wait then
    wait = math.max(wait, math.min(retry_after, policy.retry_after_max or 3600))
  end
  return wait
end

--- The check of a retry_schedule option (see postback.util.check_options):
-- nil, or what is wrong with it. A schedule lists at least one wait, each
-- from 0 to 1e7 seconds.
function M.check_schedule(name, v)
  if type(v) ~= "table" or #v == 0 then return ("option %s must be a list of seconds"):format(name) end
  for _, s in ipairs(v) do
    if type(s) ~= "number" or s ~= s or s < 0 or s > 1e7 then
      return ("option %s must list non-negative seconds"):format(name)
    end
  end
end

return M
