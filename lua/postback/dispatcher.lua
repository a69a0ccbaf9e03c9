--- A non-blocking postback dispatcher, for game loops and servers.
--
--   local d = postback.dispatcher{ concurrency = 32, retries = 3, spool = "pb.spool" }
--   d:fire("https://t.example/pb?c={click_id}", { click_id = id })  -- returns at once
--   -- every tick:
--   d:poll(0)                                                        -- never blocks
--
-- With `spool = path`, every postback is written to a spool (see
-- postback.spool) before d:fire returns its id, and marked done once
-- delivered. A dispatcher opened on the same file re-sends what was not
-- delivered, including what failed every retry: nothing is lost across a
-- crash. The spool is synced to disk once per poll (group commit) and
-- compacted as it goes; it is locked, so a second dispatcher on it gets
-- nil, err. Delivery is at least once: a postback in flight when the process
-- died is sent again, so receivers should dedupe on their click id.
local core = require "postback.core"
local errors = require "postback.errors"
local fire = require "postback.fire"
local pump = require "postback.pump"
local spool = require "postback.spool"

local M = {}
local Dispatcher = {}
Dispatcher.__index = Dispatcher
Dispatcher.__name = "postback.dispatcher"

local DEFAULTS = {}
for k, v in pairs(fire.DEFAULTS) do DEFAULTS[k] = v end
DEFAULTS.delay = 0

-- ---- the spool (postback.spool): all of the dispatcher's use of it -------

-- Opens the spool and queues what it owes; nil, err when it cannot be opened.
local function spool_open(self, o)
  local sp, err = spool.open(o.spool, { on_error = o.on_error })
  if not sp then return nil, err end
  self.spool = sp
  local n = 0
  for id, rec in sp:owed() do
    if type(rec.url) ~= "string" then
      sp:discard(id) -- not a postback of ours: moved to .corrupt, reported
    else
      n = n + 1
      local job = fire.job(rec.url, o, rec.headers)
      job.id, job.spooled = id, true
      self.pump:push(job)
    end
  end
  self.recovered = n
  return true
end

-- Writes a postback to the spool: its id, or nil, err.
local function spool_add(self, url, headers)
  return self.spool:add { url = url, headers = headers }
end

-- Marks a delivered postback done (a failed mark means it may be sent again
-- after a restart: at least once).
local function spool_done(self, job)
  if job.spooled then self.spool:done(job.id) end
end

-- Group commit (and compaction when due): once a poll.
local function spool_sync(self)
  if self.spool then self.spool:sync() end
end

local function spool_close(self)
  if self.spool then self.spool:close() end
end

-- ---------------------------------------------------------------------------

--- Creates a dispatcher.
-- opts: concurrency, per_host, retries, timeout, backoff_base, backoff_max,
-- delay (seconds before a postback's first try), spool (path),
-- on_result(result), on_attempt(info), on_error(err) (the spool's damaged
-- records and failed compactions), ok_status, ok_body, headers.
-- @return dispatcher, or nil, err when the spool cannot be opened
function M.new(opts)
  local o = fire.options(opts, 1, "dispatcher", DEFAULTS)
  for _, k in ipairs { "on_result", "on_attempt", "on_error" } do
    if o[k] ~= nil and type(o[k]) ~= "function" then
      error(("bad argument #1 to 'dispatcher' (option %s must be a function)"):format(k), 2)
    end
  end
  if o.spool ~= nil and type(o.spool) ~= "string" then
    error("bad argument #1 to 'dispatcher' (option spool must be a path)", 2)
  end
  local herr = fire.check_headers(o.headers)
  if herr then return nil, herr end
  local self = setmetatable({ opts = o, next_id = 0, delivered = 0, failed = 0 }, Dispatcher)
  self.pump = pump.new { concurrency = o.concurrency, per_host = o.per_host, profile = fire.profile(o),
    finish = function(job, ...) return self:finish(job, ...) end }

  if o.spool then
    local ok, err = spool_open(self, o)
    if not ok then
      self.pump:close()
      return nil, err
    end
  end
  return self
end

function Dispatcher:__tostring()
  return ("postback.dispatcher (%d pending)"):format(self.pump and self:pending() or 0)
end

--- Queues a postback and returns at once: its id, or nil, err (bad target).
-- Same arguments as postback.fire; opts may carry headers and delay.
function Dispatcher:fire(target, values, opts)
  if self.closed then error("dispatcher is closed", 2) end
  if target == nil then error("bad argument #1 to 'fire' (URL, template or record expected, got nil)", 2) end
  if values ~= nil and type(values) ~= "table" then
    error("bad argument #2 to 'fire' (table expected, got " .. type(values) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #3 to 'fire' (table expected, got " .. type(opts) .. ")", 2)
  end
  local o = self.opts
  local render_opts = o
  if opts and (opts.encode or opts.missing) then
    local base = o.render or {}
    render_opts = { render = { encode = opts.encode or base.encode or "url",
                               missing = opts.missing or base.missing or "empty" } }
  end
  local url, err = fire.render_target(target, values, render_opts)
  if not url then return nil, err end
  local headers = opts and opts.headers
  local herr = fire.check_headers(headers)
  if herr then return nil, herr end
  local delay = opts and opts.delay or o.delay
  local id
  if self.spool then
    local serr
    id, serr = spool_add(self, url, headers)
    if not id then return nil, serr end
  else
    self.next_id = self.next_id + 1
    id = self.next_id
  end
  local job = fire.job(url, o, headers)
  job.id, job.spooled = id, self.spool ~= nil
  if delay and delay > 0 then job.due = core.now() + delay end
  self.pump:push(job)
  return id
end

function Dispatcher:finish(job, ...)
  local o = self.opts
  local r, again = fire.judge(o, job, ...)
  r.id = job.id
  if o.on_attempt then
    o.on_attempt { id = job.id, attempt = job.attempts, status = r.status, ok = r.ok,
                   time = r.time, error = r.error, url = r.url }
  end
  if again then
    local delay = fire.retry_delay(o, job, r)
    if delay then return delay end
  end
  if r.ok then
    self.delivered = self.delivered + 1
    spool_done(self, job)
  else
    self.failed = self.failed + 1 -- stays in the spool for the next dispatcher
  end
  if o.on_result then o.on_result(r) end
end

--- Drives transfers for at most timeout seconds (default 0: never blocks)
-- and runs callbacks. Returns the number of attempts that finished.
function Dispatcher:poll(timeout)
  if self.closed then return 0 end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("bad argument #1 to 'poll' (non-negative number expected)", 2)
  end
  spool_sync(self)
  return self.pump:step(timeout or 0)
end

--- Postbacks queued, delayed, waiting for a retry or in flight.
function Dispatcher:pending()
  if self.closed then return 0 end
  return self.pump:pending()
end

--- Polls until nothing is pending or timeout seconds passed.
-- @return true, or nil, err (kind "timeout") with postbacks still pending
function Dispatcher:wait(timeout)
  local deadline = timeout and core.now() + timeout
  while self:pending() > 0 do
    local left = deadline and deadline - core.now() or 1
    if left <= 0 then
      return nil, errors.new("timeout", { message = ("%d postbacks still pending"):format(self:pending()) })
    end
    self:poll(math.min(left, 1))
  end
  spool_sync(self)
  return true
end

--- Counts: delivered, failed, pending, and the spool's stats() under
-- `spool` (nil without a spool).
function Dispatcher:stats()
  return { delivered = self.delivered, failed = self.failed, pending = self:pending(),
           spool = self.spool and not self.closed and self.spool:stats() or nil }
end

--- Stops: transfers in flight are abandoned (with a spool they are sent
-- again by the next dispatcher). Safe to call twice.
function Dispatcher:close()
  if self.closed then return end
  self.closed = true
  self.pump:close()
  spool_close(self)
end
Dispatcher.__close = Dispatcher.close
Dispatcher.__gc = Dispatcher.close

return M
