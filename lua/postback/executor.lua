--- The one request executor: a queue of jobs run on a transport.
--
-- Every HTTP call of postback runs here: an API call is a batch of one,
-- client:batch, fire, fire_many, the dispatcher and migrate are many. The
-- executor owns the retry policy, the rate limit, per-host limits and the
-- circuit breaker, delays, and the delivery of results; the transport only
-- moves requests (see postback.transport.curl for the contract).
--
--   local ex = executor.new {
--     transport = t, concurrency = 16, policy = {retries = 2, ...},
--     judge = function(job, resp, err) return value | nil, err end,
--     deliver = function(job, value, err) end,
--   }
--   ex:push({ req = {method = "GET", url = ...} })
--   ex:run()
--
-- A job is a table: `req` (a transport request) or `url` (a GET with the
-- transport's profile), plus the owner's own fields. The executor adds
-- `attempts`, `started` (monotonic time of the first try) and `due`.
--
-- judge(job, resp, err) turns an attempt into the owner's value, or nil and
-- an error; an error with `retryable` is tried again by the policy (waiting
-- err.retry_after seconds when set). deliver(job, value, err) is called once
-- per job, when its outcome is final. Owner callbacks run protected: one
-- that raises loses nothing (the job goes on as if it had returned) and the
-- error goes to on_error({id =, error =, callback =}).
--
-- The fast path: a transport with `feed` and `drain` (the libcurl engine)
-- renders and starts plain fires in C and turns their 2xx answers into
-- result tables in C. The owner gives a `sink` (see transport.curl) and,
-- for many items, calls ex:feed(source); only the other outcomes come back
-- through judge. It is used only when nothing needs to see each attempt in
-- Lua (no rate limit, per-host limit or breaker; plain success rules).
local core = require "postback.core"
local errors = require "postback.errors"
local retry = require "postback.retry"
local util = require "postback.util"

local M = {}
local Executor = {}
Executor.__index = Executor
Executor.__name = "postback.executor"

-- ---- a binary heap on job.due ------------------------------------------------

local function heap_push(h, job)
  local i = #h + 1
  h[i] = job
  while i > 1 do
    local p = (i - i % 2) / 2
    if h[p].due <= h[i].due then break end
    h[p], h[i] = h[i], h[p]
    i = p
  end
end

local function heap_pop(h)
  local top, n = h[1], #h
  h[1] = h[n]
  h[n] = nil
  n = n - 1
  local i = 1
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= n and h[l].due < h[m].due then m = l end
    if r <= n and h[r].due < h[m].due then m = r end
    if m == i then break end
    h[m], h[i] = h[i], h[m]
    i = m
  end
  return top
end

-- ---- construction ------------------------------------------------------------

local function default_on_error(info)
  io.stderr:write(("postback: %s raised for job %s: %s\n"):format(
    tostring(info.callback), tostring(info.id), tostring(info.error)))
end

--- Creates an executor. opts:
--   transport    (required) object with submit/wait (see transport.curl)
--   concurrency  jobs in flight at once (default 16)
--   policy       {retries, backoff_base, backoff_max, max_retry_time, retry_schedule}
--   judge, deliver (required), on_attempt(job, value, err), on_error(info)
--   rate_limit   jobs started per second (token bucket of one)
--   per_host     jobs in flight per host; per_host_rate: starts per second per host
--   breaker      {failures = N, cooldown = seconds, on_change = fn(host, state)}:
--                after N consecutive failed attempts a host is paused
--   sink         fast-path sink (results, on_result, done, with_id, plain)
--   fast_job     function(outcome) -> job, for a fast fire that needs judging
function M.new(o)
  local self = setmetatable({
    transport = assert(o.transport, "executor needs a transport"),
    concurrency = o.concurrency or 16,
    policy = o.policy or { retries = 0 },
    judge = assert(o.judge, "executor needs judge"),
    deliver = assert(o.deliver, "executor needs deliver"),
    on_attempt = o.on_attempt,
    on_error = o.on_error or default_on_error,
    rate_limit = o.rate_limit,
    per_host = o.per_host,
    per_host_rate = o.per_host_rate,
    breaker = o.breaker,
    fast_job = o.fast_job,
    inflight = {},      -- tag -> job
    ninflight = 0,
    nfast = 0,          -- fast-path transfers in flight (no job table)
    fifo = {}, head = 1, tail = 0,
    heap = {},
    next_tag = 0,
    hosts = {},         -- host -> {inflight, waiting fifo, tokens, t, failures, open_until}
    nwaiting = 0,       -- jobs parked behind their host's per_host cap
    stats_ = { started = 0, delivered = 0, failed = 0, retried = 0, callback_errors = 0, paused = 0 },
  }, Executor)
  self.by_host = self.per_host or self.per_host_rate or self.breaker
  if self.rate_limit then self.tokens, self.token_time = 1, core.now() end
  -- The fast path needs a transport that has it and nothing per attempt.
  self.fast = o.sink ~= nil and self.transport.feed ~= nil and not self.rate_limit and not self.by_host
  if self.fast then
    self.sink = o.sink
    self.sink.slow = self.sink.slow or {}
    self.sink.errors = self.sink.errors or {}
  else
    self.sink = { slow = {}, errors = {} }
  end
  return self
end

--- A new tag (job id) unique in this executor.
function Executor:tag()
  self.next_tag = self.next_tag + 1
  return self.next_tag
end

-- Runs an owner callback protected; reports an error with the job's id.
-- Returns what pcall returns (two values at most).
function Executor:call(name, fn, job, ...)
  local ok, a, b = pcall(fn, ...)
  if not ok then
    self.stats_.callback_errors = self.stats_.callback_errors + 1
    pcall(self.on_error, { callback = name, id = job and (job.id or job.index or job.tag), error = a })
  end
  return ok, a, b
end

-- ---- queueing ----------------------------------------------------------------------

--- Queues a job (job.due: monotonic time before which it must not start).
function Executor:push(job)
  if not job.tag then job.tag = self:tag() end
  if job.due and job.due > core.now() then
    heap_push(self.heap, job)
  else
    self.tail = self.tail + 1
    self.fifo[self.tail] = job
  end
  if self.transport.wake then self.transport:wake() end
end

local function host_of(job)
  local h = job.host
  if not h then
    h = util.host_of(job.url or job.req.url) or ""
    job.host = h
  end
  return h
end

function Executor:host_state(h)
  local st = self.hosts[h]
  if not st then
    st = { inflight = 0, waiting = {}, wh = 1, wt = 0, failures = 0 }
    if self.per_host_rate then st.tokens, st.t = 1, core.now() end
    self.hosts[h] = st
  end
  return st
end

-- Seconds until job may start under the rate limit (0 = now; a token is
-- taken then).
function Executor:rate_wait(now)
  if not self.rate_limit then return 0 end
  self.tokens = math.min(1, self.tokens + (now - self.token_time) * self.rate_limit)
  self.token_time = now
  if self.tokens < 1 then return (1 - self.tokens) / self.rate_limit end
  self.tokens = self.tokens - 1
  return 0
end

-- Whether job may start now under the per-host rules. When it may not, it
-- is parked (per host, or in the heap until its host may start again).
function Executor:host_admits(job, now)
  local st = self:host_state(host_of(job))
  if st.open_until then
    if now < st.open_until then
      job.due = st.open_until
      heap_push(self.heap, job)
      return false
    end
    -- half-open: one job probes the host
    if st.probing then
      job.due = now + 0.05
      heap_push(self.heap, job)
      return false
    end
    st.probing = true
  end
  if self.per_host and st.inflight >= self.per_host then
    st.wt = st.wt + 1
    st.waiting[st.wt] = job
    self.nwaiting = self.nwaiting + 1
    return false
  end
  if self.per_host_rate then
    st.tokens = math.min(1, st.tokens + (now - st.t) * self.per_host_rate)
    st.t = now
    if st.tokens < 1 then
      job.due = now + (1 - st.tokens) / self.per_host_rate
      heap_push(self.heap, job)
      return false
    end
    st.tokens = st.tokens - 1
  end
  st.inflight = st.inflight + 1
  return true
end

-- A job of host h finished: one job waiting for that host may go.
function Executor:host_release(job)
  local st = self.hosts[job.host]
  if not st then return end
  st.inflight = st.inflight - 1
  if st.wh <= st.wt then
    local next_job = st.waiting[st.wh]
    st.waiting[st.wh] = nil
    st.wh = st.wh + 1
    self.nwaiting = self.nwaiting - 1
    self.tail = self.tail + 1
    self.fifo[self.tail] = next_job
  end
end

-- Forgets a host that holds nothing any more (no job in flight or waiting,
-- no failures counted, its rate tokens back), so a gateway that fires to
-- millions of hosts keeps state only for the busy ones.
function Executor:host_forget(job)
  local h = job.host
  local st = h and self.hosts[h]
  if not st or st.inflight > 0 or st.wh <= st.wt or st.failures > 0 or st.open_until or st.probing then
    return
  end
  if self.per_host_rate and (core.now() - st.t) * self.per_host_rate < 1 - st.tokens then return end
  self.hosts[h] = nil
end

-- The breaker's view of an attempt's outcome.
function Executor:host_outcome(job, failed)
  local b = self.breaker
  if not b then return end
  local st = self.hosts[job.host]
  if not st then return end
  if failed then
    st.failures = st.failures + 1
    if st.probing or st.failures >= (b.failures or 5) then
      local was_open = st.open_until ~= nil
      st.open_until = core.now() + (b.cooldown or 30)
      st.probing = false
      if not was_open then
        self.stats_.paused = self.stats_.paused + 1
        if b.on_change then self:call("on_breaker", b.on_change, job, job.host, "open") end
      end
    end
  else
    st.failures = 0
    if st.open_until then
      st.open_until, st.probing = nil, false
      self.stats_.paused = self.stats_.paused - 1
      if b.on_change then self:call("on_breaker", b.on_change, job, job.host, "closed") end
    end
  end
end

local function next_ready(self, now)
  local h = self.heap
  if h[1] and h[1].due <= now then return heap_pop(h) end
  if self.head <= self.tail then
    local job = self.fifo[self.head]
    self.fifo[self.head] = nil
    self.head = self.head + 1
    return job
  end
  local src = self.source
  if src then
    local job = src()
    if job == nil then self.source = nil end
    return job
  end
end

-- Starts one job (its due time has come). Returns false when the rate
-- limit says to wait (the job is put back first).
function Executor:start(job, now)
  local wait = self:rate_wait(now)
  if wait > 0 then
    job.due = now + wait
    heap_push(self.heap, job)
    return false
  end
  if self.by_host and not self:host_admits(job, now) then return true end
  job.attempts = (job.attempts or 0) + 1
  job.started = job.started or now
  job.t0 = now
  self.stats_.started = self.stats_.started + 1
  local ok, err = self.transport:submit(job)
  if not ok then
    -- Refused before sending: final, never retried.
    if self.by_host then self:host_release(job) end
    err = errors.is(err) and err or errors.new("validation", { message = tostring(err) })
    err.retryable, err.sent = false, false
    self:finish_job(job, nil, err, true)
    return true
  end
  self.inflight[job.tag] = job
  self.ninflight = self.ninflight + 1
  return true
end

--- From now on nothing new starts; what is in flight finishes and is
-- delivered (a worker shutting down).
function Executor:stop()
  self.stopped = true
end

--- Starts every job that may start now, within the concurrency bound.
-- Plain items of a feed go to the transport in batches, up to twice the
-- concurrency: the engine starts the queued ones itself as others finish.
function Executor:fill()
  if self.stopped then return end
  local now = core.now()
  local c = self.concurrency
  while self.ninflight + self.nfast < c do
    local job = next_ready(self, now)
    if not job then break end
    if job.due and job.due > now then
      heap_push(self.heap, job) -- a source job with a delay
    elseif not self:start(job, now) then
      break
    end
  end
  -- the engine keeps up to as many again queued, started as others finish
  while self.feed_source and self.ninflight + self.nfast < 2 * c do
    if not self:feed(2 * c - self.ninflight - self.nfast) then break end
  end
end

-- ---- the fast path -----------------------------------------------------------------

--- Counts n fast fires the owner started on the transport itself (they end
-- through the sink like fed ones).
function Executor:fast_started(n)
  self.nfast = self.nfast + n
  self.stats_.started = self.stats_.started + n
end

--- Feeds plain items to the transport: fs = {items = array|iterator,
-- next = index, render = opts, slow = function(item, i) -> job | nil,
-- failed = function(i, err)}. Items that are not plain become jobs through
-- fs.slow. Returns false when nothing more can be fed now.
function Executor:set_feed(fs)
  self.feed_source = fs
end

function Executor:feed(room)
  local fs = self.feed_source
  if room <= 0 then return false end
  local i0 = fs.next
  local ni, what, extra = self.transport:feed(fs.items, i0, room, fs.render)
  self.nfast = self.nfast + (ni - i0)
  fs.next = ni
  if what == "room" then return true end
  if what == "end" then
    self.feed_source = nil
    return false
  end
  fs.next = ni + 1
  if what == "error" then
    self:call("deliver", fs.failed, nil, ni, extra)
    return true
  end
  -- "slow": an item the fast path does not take
  local job = fs.slow(extra, ni)
  if job then
    job.tag = job.tag or ni
    local now = core.now()
    if job.due and job.due > now then heap_push(self.heap, job)
    else self:start(job, now) end
  end
  return true
end

-- ---- outcomes ------------------------------------------------------------------------

-- Ends an attempt: judged value or err; retries or delivers. An err
-- without attempts (refused before sending) gets the job's.
function Executor:finish_job(job, value, err, refused)
  if err and err.attempts == nil then err.attempts = job.attempts end
  if self.on_attempt then self:call("on_attempt", self.on_attempt, job, job, value, err) end
  if self.breaker then
    if not refused then
      self:host_outcome(job, err ~= nil)
    elseif job.host and self.hosts[job.host] then
      self.hosts[job.host].probing = false -- a probe refused before sending proved nothing
    end
  end
  if self.by_host then self:host_forget(job) end
  if err and err.retryable then
    local delay = retry.next_delay(self.policy, job.attempts, job.started, err.retry_after)
    if delay then
      self.stats_.retried = self.stats_.retried + 1
      job.due = core.now() + delay
      heap_push(self.heap, job)
      return
    end
  end
  if value ~= nil then
    self.stats_.delivered = self.stats_.delivered + 1
  else
    self.stats_.failed = self.stats_.failed + 1
  end
  self:call("deliver", job.on_done or self.deliver, job, job, value, err)
end

-- One finished transfer (from the transport): resp or terr.
function Executor:complete(tag, resp, terr)
  local job = self.inflight[tag]
  if not job then return end
  self.inflight[tag] = nil
  self.ninflight = self.ninflight - 1
  if self.by_host then self:host_release(job) end
  local ok, value, err = self:call("judge", self.judge, job, job, resp, terr)
  if not ok then
    value, err = nil, errors.new("validation", { message = "judging the answer failed: " .. tostring(value),
      retryable = false })
  end
  self:finish_job(job, value, err)
end

-- Takes what the transport finished: fast results were delivered in C,
-- the rest is judged here.
function Executor:collect(n)
  local sink = self.sink
  local slow = sink.slow
  local nslow = #slow
  self.nfast = self.nfast - (n - nslow)
  self.stats_.delivered = self.stats_.delivered + (n - nslow)
  local errs = sink.errors
  if errs[1] then
    for i = 1, #errs do
      local e = errs[i]
      errs[i] = nil
      self.stats_.callback_errors = self.stats_.callback_errors + 1
      pcall(self.on_error, { callback = "on_result", id = e.id, error = e.error })
    end
  end
  if nslow == 0 then return end
  local t = self.transport
  for i = 1, nslow do
    local o = slow[i]
    slow[i] = nil
    if o.fast then
      -- a fast fire that did not simply succeed: it becomes a job now
      self.nfast = self.nfast - 1
      local job = self.fast_job and self.fast_job(o) or { url = o.url, index = o.tag }
      job.tag = o.tag
      job.attempts, job.started, job.t0 = 1, core.now() - (o.seconds or 0), core.now() - (o.seconds or 0)
      self.stats_.started = self.stats_.started + 1
      self.inflight[o.tag] = job
      self.ninflight = self.ninflight + 1
    end
    self:complete(o.tag, t:outcome(o))
  end
end

--- Drives the jobs for at most `timeout` seconds (0 = never blocks); returns
-- the number of transfers that finished.
function Executor:step(timeout)
  self:fill()
  local wait = timeout or 0
  local now = core.now()
  local h = self.heap[1]
  if h and wait > 0 then wait = math.max(0, math.min(wait, h.due - now)) end
  if self.ninflight + self.nfast == 0 then
    if wait > 0 and (h or self.source or self.feed_source) then
      self.transport:sleep(wait)
      self:fill()
    end
    if self.ninflight + self.nfast == 0 then return 0 end
    wait = 0
  end
  local n = self.transport:wait(wait, self.sink, self)
  if n > 0 then self:collect(n) end
  self:fill()
  return n
end

--- Jobs queued, delayed or in flight (a pending source not counted).
function Executor:pending()
  return self.ninflight + self.nfast + (self.tail - self.head + 1) + #self.heap + self.nwaiting
end

--- True when nothing is left to do, sources included.
function Executor:idle()
  return self:pending() == 0 and self.source == nil and self.feed_source == nil
end

--- Runs until every job is over.
function Executor:run()
  while not self:idle() do self:step(1) end
end

--- Runs one job to its end: the value, or nil, err (other queued jobs move
-- too). The job's on_done, when set, is replaced.
function Executor:run_job(job)
  local value, err, over
  job.on_done = function(_, v, e) value, err, over = v, e, true end
  self:push(job)
  while not over do self:step(1) end
  return value, err
end

--- Counters: started, delivered, failed, retried, callback_errors, paused
-- (hosts the breaker holds), and queue sizes.
function Executor:stats()
  local s = {}
  for k, v in pairs(self.stats_) do s[k] = v end
  s.inflight = self.ninflight + self.nfast
  s.queued = self.tail - self.head + 1
  s.delayed = #self.heap
  return s
end

--- Moves finished outcomes ({tag, resp, err} tables) from a transport's
-- list to the sink, for transports that collect them in Lua; returns how
-- many there were.
function M.hand_over(done, sink)
  local slow = sink.slow
  local n = #done
  for i = 1, n do
    slow[#slow + 1] = done[i]
    done[i] = nil
  end
  return n
end

--- A transport over a blocking request function (the client's `transport`
-- option): fn(req) -> resp | nil, err, or an object with :request(req).
-- Each job runs when it is submitted; its outcome waits for the next wait.
function M.sync_transport(fn, profile)
  local request = fn
  if type(fn) == "table" then request = function(req) return fn:request(req) end end
  local t = { done = {} }
  function t.submit(self, job)
    local req = job.req
    if not req then
      req = {}
      for k, v in pairs(profile or {}) do req[k] = v end
      req.method, req.url = "GET", job.url
    end
    local t0 = core.now()
    local ok, resp, err = pcall(request, req)
    if not ok then
      resp, err = nil, errors.new("transport", { message = "transport raised: " .. tostring(resp) })
    elseif resp == nil and not errors.is(err) then
      err = errors.new("transport", { message = tostring(err or "the transport returned nothing") })
    end
    if resp and resp.seconds == nil then resp.seconds = core.now() - t0 end
    self.done[#self.done + 1] = { tag = job.tag, resp = resp, err = err }
    return true
  end
  function t.wait(self, _, sink) return M.hand_over(self.done, sink) end
  function t.outcome(_, o) return o.resp, o.err end
  function t.sleep(_, s)
    if util.in_nginx() then ngx.sleep(s) else core.sleep(s) end
  end
  function t.close() end
  return t
end

function Executor:close()
  if self.closed then return end
  self.closed = true
  self.transport:close()
end

return M
