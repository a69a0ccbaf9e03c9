--- A queue worker: delivers the entries of a postback.queue stream.
--
--   local w = assert(postback.worker { redis = "redis://127.0.0.1:6379/0", stream = "postbacks",
--                                      concurrency = 32, timeout = 10 })
--   w:run()          -- a worker process: polls forever (postback worker does this)
--   w:poll(0)        -- or, from a game loop's tick: never waits on Redis or HTTP
--
-- How it handles entries:
-- * It reads through a consumer group (XREADGROUP) only as many entries as
--   it can fire at once, fires each once through a postback.dispatcher
--   (retries = 0), and acknowledges (XACK, then XDEL) once the attempt's
--   outcome is final. Retries go to the delayed set (S:delayed, by due time)
--   and back to the stream when due, moved by whichever worker holds a
--   short lock; so a retry survives the worker. After the last attempt an
--   entry goes to the dead-letter stream (S:dead).
-- * Entries held by a dead worker are reclaimed with XAUTOCLAIM once idle
--   for claim_idle, which is always longer than the request timeout plus a
--   margin: a shorter one reclaims entries whose first delivery is still
--   running, and delivers them twice (svix-webhooks#2181). Entries a live
--   worker holds for longer (a receiver held back by per-host limits) are
--   touched so they never look idle.
-- * Redis away: outcomes are kept in memory and written after the
--   reconnect (with backoff and jitter); nothing held is lost. A group that
--   vanished (NOGROUP: a Redis restarted without persistence) is created
--   again (svix-webhooks#1844).
-- * Every attempt goes to a capped delivery log (S:log, XADD MAXLEN ~).
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"
local json = require "postback.json"
local qc = require "postback.queue_conn"
local queue = require "postback.queue"
local retry = require "postback.retry"

local M = {}
local Worker = {}
Worker.__index = Worker
Worker.__name = "postback.worker"

-- Options the worker reads itself; every other option goes to its dispatcher.
local OWN = {
  redis = true, stream = true, group = true, consumer = true, redis_timeout = true,
  retries = true, retry_schedule = true, backoff_base = true, backoff_max = true,
  retry_after_max = true, claim_idle = true, block = true, log_max = true, metrics = true,
  on_result = true, move_interval = true, stats_interval = true, spool = true, delay = true,
  on_attempt = true,
}

local DEFAULTS = {
  concurrency = 16, timeout = 10, retries = 10, backoff_base = 10, backoff_max = 3600,
  claim_margin = 10, block = 1, log_max = 10000, move_interval = 1, stats_interval = 5,
}

-- The smallest margin between the request timeout and claim_idle.
local MIN_MARGIN = 5

-- Latency buckets of the per-host histogram (seconds).
local BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 }

-- Raises "bad argument" to 'worker'; level as error() would take it in the
-- function that calls this one (default 2: that function's caller).
local function argerror(msg, level)
  util.argerror(1, "worker", msg, (level or 2) + 1)
end

local function positive(opts, k, allow_zero)
  local v = opts[k]
  if v == nil then return DEFAULTS[k] end
  if type(v) ~= "number" or v ~= v or v < 0 or (v == 0 and not allow_zero) then
    argerror("option " .. k .. " must be a " .. (allow_zero and "non-negative" or "positive") .. " number", 3)
  end
  return v
end

local function ms(seconds)
  return ("%.0f"):format((seconds or 0) * 1000)
end

--- Creates a worker (it connects on the first poll). opts: redis (URL,
-- required), stream ("postbacks"), group ("postback"), consumer (default
-- host-pid-random), concurrency (16), timeout (10 s, per attempt),
-- retries (10) with backoff_base (10 s) and backoff_max (3600 s), or
-- retry_schedule = {5, 300, 1800} (seconds); claim_idle (default timeout +
-- 10 s, at least timeout + 5 s), block (1 s: the longest an idle read
-- waits in Redis), log_max (10000 entries in the delivery log, 0 = none),
-- metrics ("127.0.0.1:PORT": serve the metrics text), on_result(result),
-- redis_timeout (5 s), and any firing option of the dispatcher (headers,
-- connect_timeout, allow_private, allow_networks, per_host, ok_status, ...).
-- @return worker, or nil, err (a bad URL, the postback.redis module
-- missing, the metrics address taken)
function M.new(opts)
  qc.refuse_in_nginx("postback.worker", 2)
  local c, err = queue.common(opts, "worker")
  if not c then return nil, err end
  local concurrency = positive(opts, "concurrency")
  local timeout = positive(opts, "timeout")
  local policy = { retries = positive(opts, "retries", true), backoff_base = positive(opts, "backoff_base"),
                   backoff_max = positive(opts, "backoff_max"), retry_after_max = opts.retry_after_max }
  if opts.retry_schedule ~= nil then
    local problem = retry.check_schedule("retry_schedule", opts.retry_schedule)
    if problem then argerror(problem) end
    policy.retry_schedule = opts.retry_schedule
  end
  local claim_idle = opts.claim_idle
  if claim_idle == nil then
    claim_idle = timeout + DEFAULTS.claim_margin
  elseif type(claim_idle) ~= "number" or claim_idle ~= claim_idle or claim_idle < timeout + MIN_MARGIN then
    argerror(("option claim_idle must be at least timeout + %d s (%g s): a shorter one reclaims entries "
      .. "still being delivered, and delivers them twice"):format(MIN_MARGIN, timeout + MIN_MARGIN))
  end
  if opts.on_result ~= nil and type(opts.on_result) ~= "function" then
    argerror("option on_result must be a function")
  end
  if opts.consumer ~= nil and (type(opts.consumer) ~= "string" or opts.consumer == "") then
    argerror("option consumer must be a non-empty string")
  end
  if opts.metrics ~= nil and type(opts.metrics) ~= "string" then
    argerror("option metrics must be \"HOST:PORT\"")
  end
  local log_max = positive(opts, "log_max", true)
  -- the flush script trims the log to it: a whole number Redis reads
  if log_max > 2^53 then argerror("option log_max must be at most 2^53 entries") end

  local driver, derr = qc.driver()
  if not driver then return nil, derr end
  local consumer = opts.consumer
  if not consumer then
    local host, pid = driver.identity()
    consumer = ("%s-%d-%s"):format(host, pid, driver.random_hex(3) or "0")
  end

  local self = setmetatable({
    stream = c.stream, group = c.group, keys = qc.keys(c.stream), consumer = consumer,
    concurrency = concurrency, timeout = timeout, policy = policy, claim_idle = claim_idle,
    touch_interval = claim_idle / 3, block = positive(opts, "block"), log_max = math.floor(log_max),
    move_interval = positive(opts, "move_interval"), stats_interval = positive(opts, "stats_interval"),
    on_result = opts.on_result,
    held = {}, nheld = 0, by_did = {}, early = {},
    outq = {}, outsids = {},
    next_read_at = 0, next_claim_at = 0, next_move_at = 0, next_touch_at = 0, next_stats_at = 0,
    next_flush_at = 0, claim_cursor = "0-0", recovering = false,
    counts = { delivered = 0, failed = 0, retried = 0, dead = 0, reclaimed = 0 },
    hist = {}, qstats = nil, attempts_done = 0, asked = 0,
  }, Worker)

  local conn, cerr = qc.new(c.target, { timeout = c.redis_timeout,
    on_ready = function() self:connected() end })
  if not conn then return nil, cerr end
  self.conn = conn

  -- The dispatcher fires each attempt once; the worker owns the retries.
  local dopts = {}
  for k, v in pairs(opts) do
    if not OWN[k] then dopts[k] = v end
  end
  dopts.concurrency, dopts.timeout, dopts.retries = concurrency, timeout, 0
  dopts.on_result = function(r) self:result(r) end
  local d, ferr = require("postback").dispatcher(dopts)
  if not d then return nil, ferr end
  self.d = d

  if opts.metrics then
    local ok, merr = self:listen(opts.metrics)
    if not ok then
      d:close()
      conn:close()
      return nil, merr
    end
  end
  return self
end

function Worker:__tostring()
  return ("postback.worker (%s, stream %s, %d in flight)"):format(self.consumer, self.stream, self.nheld)
end

-- ---- Redis side ---------------------------------------------------------------

-- After every (re)connect: make sure the group exists, read our own
-- pending entries first (a read whose reply was lost), touch what we hold.
function Worker:connected()
  self.recovering, self.pel_cursor = true, "0"
  self.claim_cursor = "0-0"
  self.next_touch_at = 0
  for _, e in pairs(self.held) do e.touched = -math.huge end
  self:ensure_group()
end

function Worker:ensure_group()
  if self.grouping then return end
  self.grouping = true
  self.conn:send({ "XGROUP", "CREATE", self.stream, self.group, "0", "MKSTREAM" }, function(_, rerr)
    self.grouping = false
    if rerr and not rerr:find("^BUSYGROUP") then self.last_error = "Redis: " .. rerr end
  end)
end

-- A Redis error reply to one of our commands.
function Worker:redis_error(rerr)
  if rerr:find("^NOGROUP") then
    self:ensure_group()
  else
    self.last_error = "Redis: " .. rerr
  end
end

function Worker:known(sid)
  return self.held[sid] ~= nil or self.outsids[sid] ~= nil
end

-- Queues an outcome for the next flush.
function Worker:outcome(out)
  self.outq[#self.outq + 1] = out
  self.outsids[out.s] = true
end

-- Takes an entry read from the stream: fires it, or settles it at once.
function Worker:take(sid, list, now)
  if self:known(sid) then return end
  if not list then
    -- Deleted while pending (acknowledged elsewhere): just acknowledge.
    return self:outcome { k = "a", s = sid }
  end
  local f = qc.fields(list)
  local e = { sid = sid, f = f, attempt = tonumber(f.attempt) or 0, id = f.id or sid, url = f.url,
              touched = now, enqueued = f.enqueued or sid:match("^(%d+)") }
  self.held[sid] = e
  self.nheld = self.nheld + 1
  local headers, problem
  if type(f.url) ~= "string" or f.url == "" then
    problem = "the entry has no url field"
  elseif f.headers then
    headers = json.decode(f.headers)
    if type(headers) ~= "table" then problem = "the entry's headers field is not a JSON object" end
  end
  if problem then
    e.url = e.url or ""
    return self:finish(e, { ok = false, error = errors.new("validation", { code = "invalid", field = "entry",
      message = problem, retryable = false }) })
  end
  local did, ferr = self.d:fire(f.url, nil, { headers = headers, missing = "keep" })
  if not did then return self:finish(e, { ok = false, error = ferr }) end
  local r = self.early[did]
  if r then
    self.early[did] = nil
    return self:finish(e, r)
  end
  e.did = did
  self.by_did[did] = e
end

-- The dispatcher's on_result.
function Worker:result(r)
  local e = self.by_did[r.id]
  if not e then
    self.early[r.id] = r -- finished inside d:fire
    return
  end
  self.by_did[r.id] = nil
  self:finish(e, r)
end

function Worker:observe(url, seconds)
  local host = util.host_of(url) or "?"
  local h = self.hist[host]
  if not h then
    h = { counts = {}, sum = 0, n = 0 }
    for i = 1, #BUCKETS do h.counts[i] = 0 end
    self.hist[host] = h
  end
  h.n, h.sum = h.n + 1, h.sum + seconds
  for i, b in ipairs(BUCKETS) do
    if seconds <= b then h.counts[i] = h.counts[i] + 1 end
  end
end

-- Decides what an attempt's result means for its entry.
function Worker:finish(e, r)
  self.held[e.sid] = nil
  self.nheld = self.nheld - 1
  self.attempts_done = self.attempts_done + 1
  local attempt = e.attempt + 1
  local counts = self.counts
  local err = r.error
  if r.time and (r.status or (err and err.kind ~= "validation")) then self:observe(e.url, r.time) end
  local kind, delay
  if r.ok then
    kind = "a"
    counts.delivered = counts.delivered + 1
  else
    counts.failed = counts.failed + 1
    if err and err.retryable then delay = retry.delay(self.policy, attempt, err.retry_after) end
    if delay then
      kind = "r"
      counts.retried = counts.retried + 1
    else
      kind = "d"
      counts.dead = counts.dead + 1
    end
  end
  local out = { k = kind, s = e.sid }
  local message = err and (err.message or tostring(err)) or nil
  if kind ~= "a" then
    -- The entry as it goes on: every field it came with, the attempt count updated.
    local fields = {}
    for k, v in pairs(e.f) do
      if k ~= "attempt" and k ~= "status" and k ~= "error" and k ~= "failed_at" and k ~= "worker" then
        fields[#fields + 1] = k
      end
    end
    table.sort(fields)
    local list = {}
    for _, k in ipairs(fields) do
      list[#list + 1] = k
      list[#list + 1] = e.f[k]
    end
    if not e.f.id then list[#list + 1] = "id"; list[#list + 1] = e.id end
    if not e.f.enqueued and e.enqueued then list[#list + 1] = "enqueued"; list[#list + 1] = e.enqueued end
    list[#list + 1] = "attempt"
    list[#list + 1] = tostring(attempt)
    if kind == "r" then
      out.m = assert(json.encode(list))
      out.d = math.floor(delay * 1000 + 0.5)
    else
      list[#list + 1] = "status"
      list[#list + 1] = tostring(r.status or 0)
      list[#list + 1] = "error"
      list[#list + 1] = message or "failed"
      list[#list + 1] = "worker"
      list[#list + 1] = self.consumer
      out.m = list
    end
  end
  local url = util.redact_url(e.url)
  local outcome = kind == "a" and "delivered" or kind == "r" and "retry" or "dead"
  if self.log_max > 0 then
    out.log = { "id", e.id, "sid", e.sid, "url", url, "attempt", tostring(attempt),
                "outcome", outcome, "status", tostring(r.status or 0), "ms", ms(r.time), "worker", self.consumer }
    if message then
      out.log[#out.log + 1] = "error"
      out.log[#out.log + 1] = message
    end
  end
  self:outcome(out)
  if self.on_result then
    self.on_result { ok = r.ok == true, status = r.status, error = err, url = url, id = e.id,
                     sid = e.sid, attempt = attempt, time = r.time, outcome = outcome, retry_in = delay }
  end
end

local FLUSH_MAX = 256

-- Writes queued outcomes (one script, one at a time). They leave memory
-- only once Redis confirmed them.
function Worker:flush(now)
  local q = self.outq
  if self.flushing or #q == 0 or now < self.next_flush_at then return end
  local n = math.min(#q, FLUSH_MAX)
  local o, l = {}, {}
  for i = 1, n do
    local out = q[i]
    o[i] = { k = out.k, s = out.s, m = out.m, d = out.d, q = out.q }
    if out.log then l[#l + 1] = out.log end
  end
  local payload = assert(json.encode { o = o, l = l })
  local k = self.keys
  self.flushing = true
  self.conn:eval_send(qc.FLUSH, { k.stream, k.delayed, k.dead, k.log },
    { self.group, self.consumer, self.log_max, payload }, function(v, rerr, why)
      self.flushing = false
      if v then
        for i = 1, n do self.outsids[q[i].s] = nil end
        local total = #q
        for i = n + 1, total do q[i - n] = q[i] end
        for i = total - n + 1, total do q[i] = nil end
        return
      end
      if why then
        for i = 1, n do q[i].q = 1 end -- may have been applied: checked on the next try
      elseif rerr then
        self:redis_error(rerr)
        if not rerr:find("^NOGROUP") then self.next_flush_at = core.now() + 1 end
      end
    end)
end

-- Is a reclaim pass due? (Only after being connected for claim_idle.)
function Worker:claim_due(now)
  return not self.draining and now >= self.next_claim_at
    and now - (self.conn.ready_at or now) >= self.claim_idle
end

function Worker:read(now)
  if self.reading or self.draining or now < self.next_read_at then return end
  -- A reclaim goes first: an idle worker always has a read waiting in
  -- Redis, which would otherwise keep its free slots from every claim.
  if self.claiming or self:claim_due(now) then return end
  local free = self.concurrency - self.nheld - self.asked
  if free <= 0 or #self.outq >= 4 * self.concurrency + FLUSH_MAX then return end
  local block
  local args = { "XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", free }
  if self.recovering then
    args[#args + 1] = "STREAMS"
    args[#args + 1] = self.stream
    args[#args + 1] = self.pel_cursor
  else
    if self.nheld == 0 and #self.outq == 0 and self.d:pending() == 0 and self.block > 0 then
      block = self.block
      args[#args + 1] = "BLOCK"
      args[#args + 1] = math.floor(block * 1000)
    end
    args[#args + 1] = "STREAMS"
    args[#args + 1] = self.stream
    args[#args + 1] = ">"
  end
  local recovering = self.recovering
  self.reading = true
  self.asked = self.asked + free
  self.conn:send(args, function(v, rerr, why)
    self.reading = false
    self.asked = self.asked - free
    if why then return end
    local t = core.now()
    if rerr then
      self:redis_error(rerr)
      self.next_read_at = t + 0.1
      return
    end
    local entries = v and v[1] and v[1][2] or {}
    for _, e in ipairs(entries) do
      if recovering then self.pel_cursor = e[1] end
      self:take(e[1], e[2], t)
    end
    if recovering and self.recovering and #entries == 0 then self.recovering = false end
    if not recovering and not block and #entries == 0 then self.next_read_at = t + 0.05 end
  end, block)
end

function Worker:claim(now)
  if self.claiming or not self:claim_due(now) then return end
  local free = self.concurrency - self.nheld - self.asked
  if free <= 0 then return end
  self.claiming = true
  self.asked = self.asked + free
  self.conn:send({ "XAUTOCLAIM", self.stream, self.group, self.consumer, math.floor(self.claim_idle * 1000),
                   self.claim_cursor, "COUNT", free }, function(v, rerr, why)
    self.claiming = false
    self.asked = self.asked - free
    local t = core.now()
    if why then return end
    if rerr then
      self:redis_error(rerr)
      self.next_claim_at = t + 1
      return
    end
    self.claim_cursor = v[1] or "0-0"
    for _, e in ipairs(v[2] or {}) do
      if not self:known(e[1]) then
        self.counts.reclaimed = self.counts.reclaimed + 1
        self:take(e[1], e[2], t)
      end
    end
    if self.claim_cursor == "0-0" then
      -- A whole pass done: also forget consumers long gone with nothing pending.
      self.next_claim_at = t + math.min(self.claim_idle / 2, 30)
      self.conn:eval_send(qc.PRUNE, { self.stream }, { self.group, self.consumer,
        math.floor(math.max(3600, self.claim_idle * 10) * 1000) })
    end
  end)
end

function Worker:move(now)
  if self.moving or now < self.next_move_at then return end
  local k = self.keys
  self.moving = true
  self.next_move_at = now + self.move_interval
  self.conn:eval_send(qc.MOVE, { k.stream, k.delayed, k.lock },
    { self.consumer, math.max(100, math.floor(self.move_interval * 1000)), 100 }, function(v, rerr)
      self.moving = false
      if rerr then return self:redis_error(rerr) end
      if v == 100 then self.next_move_at = core.now() end -- more are due
    end)
end

function Worker:touch(now)
  if self.touching or now < self.next_touch_at then return end
  self.next_touch_at = now + self.touch_interval / 2
  local ids, list = {}, {}
  for sid, e in pairs(self.held) do
    if now - e.touched >= self.touch_interval then
      ids[#ids + 1] = sid
      list[#list + 1] = e
    end
  end
  if #ids == 0 then return end
  local argv = { self.group, self.consumer }
  for _, sid in ipairs(ids) do argv[#argv + 1] = sid end
  self.touching = true
  self.conn:eval_send(qc.TOUCH, { self.stream }, argv, function(v, rerr)
    self.touching = false
    if rerr then return self:redis_error(rerr) end
    if v then
      for _, e in ipairs(list) do e.touched = now end
    end
  end)
end

function Worker:refresh_stats(now)
  if self.stats_busy or now < self.next_stats_at then return end
  self.next_stats_at = now + self.stats_interval
  local k = self.keys
  self.stats_busy = true
  self.conn:eval_send(qc.STATS, { k.stream, k.delayed, k.dead }, { self.group }, function(v)
    self.stats_busy = false
    if type(v) == "table" then self.qstats = qc.stats(v) end
  end)
end

-- ---- the loop ---------------------------------------------------------------

-- One round of everything, without waiting.
function Worker:step()
  local conn = self.conn
  conn:step(true)
  self.d:poll(0)
  if conn:ready() then
    local now = core.now()
    self:flush(now)
    if not self.grouping then
      self:claim(now)
      self:read(now)
      self:move(now)
      self:touch(now)
      self:refresh_stats(now)
    end
    conn:step(false)
  end
  if self.server then self:serve() end
  if self.draining and self.nheld == 0 and #self.outq == 0 then self.stopped = true end
end

--- Drives the worker for at most timeout seconds (0, the default, never
-- waits: for a game loop's tick). Returns the number of attempts that
-- finished.
function Worker:poll(timeout)
  if self.closed then return 0 end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'poll' (non-negative number expected)", 2)
  end
  timeout = timeout or 0
  local done0 = self.attempts_done
  local deadline = core.now() + timeout
  self:step()
  while timeout > 0 and not self.stopped do
    local left = deadline - core.now()
    if left <= 0 then break end
    local slice = math.min(left, 0.05)
    local conn = self.conn
    local busy_redis = conn.c ~= nil and (conn:outstanding() > 0 or conn.state ~= "ready")
    if self.d:pending() > 0 then
      if busy_redis then conn:wait(math.min(slice, 0.002)) else self.d:poll(slice) end
    else
      conn:wait(slice) -- for Redis, or asleep until the next connect try
    end
    self:step()
  end
  return self.attempts_done - done0
end

--- Runs until stop() (from a callback) or close(): the loop of a worker
-- process. Returns true.
function Worker:run()
  while not self.stopped and not self.closed do self:poll(1) end
  return true
end

--- Asks run() to return once the entries held are delivered and their
-- outcomes written; nothing new is read meanwhile.
function Worker:stop()
  self.draining = true
end

--- What the worker has done and holds: {delivered, failed, retried, dead,
-- reclaimed, in_flight, unacked, connected, reconnects, last_error, queue}
-- (queue: the last q:stats()-like reading, refreshed every stats_interval).
function Worker:stats()
  local c = self.counts
  return { delivered = c.delivered, failed = c.failed, retried = c.retried, dead = c.dead,
           reclaimed = c.reclaimed, in_flight = self.nheld, unacked = #self.outq,
           connected = self.conn:ready(), reconnects = self.conn.reconnects,
           last_error = self.last_error or self.conn.last_error, queue = self.qstats,
           consumer = self.consumer }
end

-- ---- metrics ----------------------------------------------------------------

local function label(v)
  return (tostring(v):gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function num(v)
  if v == math.huge then return "+Inf" end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%.0f"):format(v) end
  return ("%.6g"):format(v)
end

--- The metrics in Prometheus's text format (what --metrics serves).
function Worker:metrics()
  local s = label(self.stream)
  local out = {}
  local function metric(name, kind, help, value, labels)
    out[#out + 1] = ("# HELP %s %s\n# TYPE %s %s\n"):format(name, help, name, kind)
    out[#out + 1] = ("%s{stream=\"%s\"%s} %s\n"):format(name, s, labels or "", num(value))
  end
  local c = self.counts
  metric("postback_delivered_total", "counter", "Postbacks delivered.", c.delivered)
  metric("postback_failed_total", "counter", "Attempts that failed.", c.failed)
  metric("postback_retried_total", "counter", "Failed attempts scheduled for a retry.", c.retried)
  metric("postback_dead_lettered_total", "counter", "Postbacks moved to the dead-letter stream.", c.dead)
  metric("postback_reclaimed_total", "counter", "Entries reclaimed from workers that stopped.", c.reclaimed)
  metric("postback_in_flight", "gauge", "Entries this worker is delivering.", self.nheld)
  metric("postback_unacked", "gauge", "Outcomes waiting to be written to Redis.", #self.outq)
  metric("postback_redis_up", "gauge", "1 when the worker is connected to Redis.", self.conn:ready() and 1 or 0)
  metric("postback_redis_reconnects_total", "counter", "Connections to Redis lost.", self.conn.reconnects)
  local q = self.qstats
  if q then
    out[#out + 1] = "# HELP postback_queue_depth Entries in the queue, by state.\n# TYPE postback_queue_depth gauge\n"
    for _, st in ipairs { "ready", "pending", "delayed", "dead" } do
      out[#out + 1] = ("postback_queue_depth{stream=\"%s\",state=\"%s\"} %s\n"):format(s, st, num(q[st]))
    end
    metric("postback_queue_oldest_age_seconds", "gauge",
      "Seconds since the entry at the head of the stream was first enqueued.", q.oldest_age)
  end
  out[#out + 1] = "# HELP postback_attempt_seconds Time of delivery attempts, by receiver host.\n"
    .. "# TYPE postback_attempt_seconds histogram\n"
  local hosts = {}
  for h in pairs(self.hist) do hosts[#hosts + 1] = h end
  table.sort(hosts)
  for _, h in ipairs(hosts) do
    local hist = self.hist[h]
    local hl = ("stream=\"%s\",host=\"%s\""):format(s, label(h))
    for i, b in ipairs(BUCKETS) do
      out[#out + 1] = ("postback_attempt_seconds_bucket{%s,le=\"%s\"} %d\n"):format(hl, num(b), hist.counts[i])
    end
    out[#out + 1] = ("postback_attempt_seconds_bucket{%s,le=\"+Inf\"} %d\n"):format(hl, hist.n)
    out[#out + 1] = ("postback_attempt_seconds_sum{%s} %s\n"):format(hl, num(hist.sum))
    out[#out + 1] = ("postback_attempt_seconds_count{%s} %d\n"):format(hl, hist.n)
  end
  return table.concat(out)
end

-- A small non-blocking HTTP listener for the metrics (luasocket).
function Worker:listen(addr)
  local host, port = addr:match("^%[?([^%]]*)%]?:(%d+)$")
  if not host then
    return nil, errors.new("validation", { field = "metrics", code = "invalid",
      message = "metrics address must be HOST:PORT, e.g. 127.0.0.1:9100" })
  end
  local ok, socket = pcall(require, "socket")
  if not ok then
    return nil, errors.new("transport", { message = "serving metrics needs luasocket (lua-socket)" })
  end
  local server, err = socket.bind(host, tonumber(port))
  if not server then
    return nil, errors.new("transport", { message = ("metrics: cannot listen on %s: %s"):format(addr, tostring(err)) })
  end
  server:settimeout(0)
  self.server, self.clients = server, {}
  local _, bound = server:getsockname()
  self.metrics_port = tonumber(bound)
  return true
end

function Worker:serve()
  local now = core.now()
  for _ = 1, 16 do
    local client = self.server:accept()
    if not client then break end
    client:settimeout(0)
    self.clients[#self.clients + 1] = { sock = client, buf = "", since = now }
  end
  local keep = {}
  for _, cl in ipairs(self.clients) do
    local alive = true
    if not cl.out then
      local data, err, partial = cl.sock:receive(4096)
      cl.buf = cl.buf .. (data or partial or "")
      if cl.buf:find("\r?\n\r?\n") then
        local path = cl.buf:match("^%u+ (%S+)") or "/"
        local status, body = "200 OK", self:metrics()
        if path ~= "/metrics" and path ~= "/" then status, body = "404 Not Found", "not found\n" end
        cl.out = ("HTTP/1.1 %s\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n"
          .. "Connection: close\r\n\r\n%s"):format(status, #body, body)
        cl.sent = 0
      elseif (err and err ~= "timeout") or #cl.buf > 8192 then
        alive = false
      end
    end
    if alive and cl.out then
      local last, err, partial = cl.sock:send(cl.out, cl.sent + 1)
      cl.sent = last or partial or cl.sent
      if cl.sent >= #cl.out or (err and err ~= "timeout") then alive = false end
    end
    if alive and now - cl.since > 10 then alive = false end
    if alive then keep[#keep + 1] = cl else cl.sock:close() end
  end
  self.clients = keep
end

--- Stops at once: held entries go back to other workers (reclaimed after
-- claim_idle); outcomes not yet written are tried once, for at most
-- `timeout` seconds (default redis_timeout). Safe twice.
function Worker:close(timeout)
  if self.closed then return end
  self.draining = true -- read nothing new
  local deadline = core.now() + (timeout or self.conn.timeout)
  while #self.outq > 0 and core.now() < deadline and self.conn.state ~= "closed" do
    if self.conn.state == "down" and self.conn.failures > 0 and core.now() < self.conn.retry_at then break end
    self:step()
    if #self.outq > 0 then self.conn:wait(math.min(0.05, deadline - core.now())) end
  end
  self.closed = true
  self.d:close()
  self.conn:close()
  if self.server then
    for _, cl in ipairs(self.clients) do cl.sock:close() end
    self.server:close()
    self.server = nil
  end
end
Worker.__close = Worker.close
Worker.__gc = Worker.close

return M
