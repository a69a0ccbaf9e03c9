--- The job pump: many HTTP transfers in flight on one engine.
--
-- fire_many, the dispatcher and client:batch all drive their transfers
-- through a pump. A job is a table with a `req` (a transport request) and
-- the pump's bookkeeping, or just a `url` for a GET with the pump's request
-- profile (the fast path). The owner's `finish(job, status, body, headers,
-- fail, message, seconds, sent)` gets what engine:next returns, decides what
-- a finished transfer means and returns a delay in seconds to try the job
-- again, or nil when the job is over. Jobs wait in a FIFO until a slot is
-- free, or in a heap until their due time (delays and retries). An optional
-- `source()` is pulled for new jobs only when there is room, so an iterator
-- of a million items runs in constant memory.
local core = require "postback.core"

local M = {}
local Pump = {}
Pump.__index = Pump

--- opts: concurrency (default 16), per_host, finish (function), source
-- (function|nil), profile (request options for url-only jobs: timeout,
-- connect_timeout, max_body, follow, insecure, ca_file, user_agent, headers)
function M.new(opts)
  M.refuse_in_nginx()
  local self = setmetatable({}, Pump)
  local e = { max_host = opts.per_host }
  for k, v in pairs(opts.profile or {}) do e[k] = v end
  self.engine = core.engine(e)
  self.concurrency = opts.concurrency or 16
  self.finish = opts.finish
  self.source = opts.source
  self.inflight = {}       -- tag -> job
  self.ninflight = 0
  self.fifo, self.head, self.tail = {}, 1, 0
  self.heap = {}           -- jobs ordered by job.due
  return self
end

--- Raises when called from an nginx request or timer handler, where the
-- blocking libcurl engine would stall the whole worker.
function M.refuse_in_nginx()
  if type(ngx) == "table" and ngx.get_phase then
    local ok, ngxt = pcall(require, "postback.transport.ngx")
    if ok and ngxt.available() then
      error("postback: the libcurl engine blocks the nginx worker; inside OpenResty use "
        .. "transport = require \"postback.transport.ngx\" (fire and fire_many pick it themselves)", 3)
    end
  end
end

-- Binary heap on job.due.
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

--- Queues a job (job.due = monotonic time before which it must not start).
function Pump:push(job)
  if job.due and job.due > core.now() then
    heap_push(self.heap, job)
  else
    self.tail = self.tail + 1
    self.fifo[self.tail] = job
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
  if self.source then
    local job = self.source()
    if job == nil then self.source = nil end
    return job
  end
end

local function start(self, job)
  job.attempts = (job.attempts or 0) + 1
  local engine = self.engine
  local tag, why
  if job.req then tag, why = engine:add(job.req) else tag, why = engine:get(job.url) end
  if not tag then
    -- Refused before sending: final, never retried.
    self.finish(job, 0, "", "", "refused", "request refused before sending: " .. why, 0, false)
    return
  end
  self.inflight[tag] = job
  self.ninflight = self.ninflight + 1
end

--- Starts every job that may start now, within the concurrency bound.
function Pump:fill()
  local now = core.now()
  while self.ninflight < self.concurrency do
    local job = next_ready(self, now)
    if not job then break end
    if job.due and job.due > now then
      heap_push(self.heap, job) -- a source job with a delay
    else
      start(self, job)
    end
  end
end

--- Jobs queued, delayed or in flight (a pending source is not counted).
function Pump:pending()
  return self.ninflight + (self.tail - self.head + 1) + #self.heap
end

--- True when nothing is left to do, the source included.
function Pump:idle()
  return self:pending() == 0 and self.source == nil
end

--- Drives transfers for at most `timeout` seconds (0 = never blocks);
-- returns the number of transfers that finished.
function Pump:step(timeout)
  self:fill()
  local wait = timeout or 0
  if self.ninflight == 0 then
    -- Nothing to wait on but the next delayed job.
    local h = self.heap[1]
    if h and wait > 0 then
      local until_due = h.due - core.now()
      if until_due > 0 then core.sleep(math.min(wait, until_due)) end
      self:fill()
    end
    if self.ninflight == 0 then return 0 end
    wait = 0
  elseif self.heap[1] then
    wait = math.min(wait, math.max(0, self.heap[1].due - core.now()))
  end
  local engine, inflight, finish, done = self.engine, self.inflight, self.finish, 0
  engine:perform(wait)
  while true do
    local tag, status, body, raw, fail, message, seconds, sent = engine:next()
    if not tag then break end
    local job = inflight[tag]
    if job then
      inflight[tag] = nil
      self.ninflight = self.ninflight - 1
      done = done + 1
      local delay = finish(job, status, body, raw, fail, message, seconds, sent)
      if delay then
        job.due = core.now() + delay
        self:push(job)
      end
    end
  end
  self:fill()
  return done
end

--- Runs until every job is over.
function Pump:run()
  while not self:idle() do self:step(1) end
end

function Pump:close()
  self.engine:close()
end

return M
