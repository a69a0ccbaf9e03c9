--- A non-blocking postback dispatcher, for game loops and servers.
--
--   local d = postback.dispatcher{ concurrency = 32, retries = 3, spool = "pb.spool" }
--   d:fire("https://t.example/pb?c={click_id}", { click_id = id })  -- returns at once
--   -- every tick:
--   d:poll(0)                                                        -- never blocks
--
-- It runs on the executor (the same retries, limits and results as
-- fire_many); a plain postback is rendered and queued in C, and its 2xx
-- answer becomes its result in C. With `spool = path`, every postback is
-- written to an append-only, checksummed file before it is sent, and marked
-- done once delivered. A dispatcher opened on the same file re-sends what
-- was not delivered, including what failed every retry: nothing is lost
-- across a crash. The spool is synced to disk once per poll (group commit).
-- Delivery is at least once: a postback in flight when the process died is
-- sent again, so receivers should dedupe on their click id.
local core = require "postback.core"
local errors = require "postback.errors"
local fire = require "postback.fire"
local spool = require "postback.spool"
local util = require "postback.util"

local M = {}
local Dispatcher = {}
Dispatcher.__index = Dispatcher
Dispatcher.__name = "postback.dispatcher"

local DEFAULTS = fire.dispatcher_defaults()

--- The dispatcher's options besides the firing ones.
M.OPTIONS = fire.DISPATCHER_OPTIONS


-- A postback's final outcome (the executor's deliver).
local function finish(self, job, value, err)
  local r = fire.result(job, value, err)
  r.id = job.id
  if r.ok then
    self.delivered = self.delivered + 1
    -- a mark that cannot be written means a resend after a restart, never a loss
    if job.spooled then self.spool:done(job.id) end
  else
    self.failed = self.failed + 1
    -- what may still succeed stays in the spool for the next dispatcher
    if job.spooled and fire.final_failure(r) then self.spool:done(job.id) end
  end
  if self.opts.on_result then self.opts.on_result(r) end
end

-- Marks the postbacks the fast path delivered.
local function settle(self)
  local ids = self.done_ids
  local n = #ids
  if n == 0 then return end
  self.delivered = self.delivered + n
  local sp = self.spool
  for i = 1, n do
    if sp then sp:done(ids[i]) end
    ids[i] = nil
  end
end

--- Creates a dispatcher.
-- opts: the options of fire_many (concurrency, per_host, retries, timeout,
-- ...), delay (seconds before a postback's first try), spool (path),
-- spool_options (compact_after, max_record: see postback.spool), max_queue,
-- on_result(result), on_attempt(info), on_error(info) (callbacks that
-- raised; with a spool also its damaged records and failed compactions).
-- Inside nginx (any phase but init) it is postback.ngx_dispatcher: the
-- same API on cosockets, driven by a timer of each worker.
-- @return dispatcher, or nil, err when the spool cannot be opened
function M.new(opts)
  if util.under_nginx() then
    local given = type(opts) == "table" and opts.transport or nil
    if given == nil or given == package.loaded["postback.transport.ngx"] then
      return require("postback.ngx_dispatcher").new(opts)
    end
  end
  local o = fire.options(opts, 1, "dispatcher", M.OPTIONS, DEFAULTS)
  if o.header_error then return nil, o.header_error end
  local self = setmetatable({ opts = o, next_id = 0, delivered = 0, failed = 0, done_ids = {} }, Dispatcher)
  local t = fire.transport(o)
  self.transport = t
  self.ex = fire.executor(o, t, function(job, value, err) finish(self, job, value, err) end, {
    -- 2xx answers of plain postbacks end in C: result, on_result, done ids
    sink = (o.on_attempt == nil) and { plain = o.plain, with_id = true, on_result = o.on_result,
                                       done = self.done_ids } or nil,
    fast_job = function(outcome)
      return { url = outcome.url, id = outcome.tag, spooled = self.spool ~= nil }
    end,
  })

  if o.spool then
    local so = { on_error = o.on_error }
    for k, v in pairs(o.spool_options or {}) do so[k] = v end
    local sp, err = spool.open(o.spool, so)
    if not sp then
      self.ex:close()
      return nil, err
    end
    self.spool = sp
    local n = 0
    for id, rec in fire.owed(sp) do
      n = n + 1
      local job = fire.job(rec.url, o, rec.headers)
      job.id, job.tag, job.spooled = id, id, true
      self.ex:push(job)
    end
    self.recovered = n
  end
  return self
end

function Dispatcher:__tostring()
  return ("postback.dispatcher (%d pending)"):format(self.closed and 0 or self:pending())
end

--- Queues a postback and returns at once: its id, or nil, err (a bad
-- target, a full queue, a spool that cannot be written).
-- Same arguments as postback.fire; opts may carry headers, delay, encode
-- and missing.
function Dispatcher:fire(target, values, opts)
  if self.closed then error("dispatcher is closed", 2) end
  fire.check_dispatch(target, values, opts)
  local o = self.opts
  if o.max_queue and self:pending() >= o.max_queue then
    return nil, errors.new("transport", { code = "queue_full", retryable = true,
      message = ("the dispatcher's queue is full (max_queue = %d)"):format(o.max_queue) })
  end
  local headers = opts and opts.headers
  local delay = opts and opts.delay or o.delay
  local ex = self.ex
  local fast = ex.fast and headers == nil and not (delay and delay > 0)

  if fast and not self.spool and (type(target) == "string" or getmetatable(target) == core.template_mt) then
    -- rendered and queued in C
    local id = self.next_id + 1
    local ok, err = self.transport:fire(target, values, id, fire.dispatch_render(o, opts))
    if not ok then return nil, err end
    self.next_id = id
    ex:fast_started(1)
    return id
  end

  local url, err = fire.dispatch_url(o, target, values, opts)
  if not url then return nil, err end
  local id
  if self.spool then
    -- in the file before the id is returned
    local serr
    id, serr = self.spool:add { url = url, headers = headers }
    if not id then return nil, serr end
  else
    id = self.next_id + 1
    self.next_id = id
  end
  if fast then
    if self.transport:fire_url(url, id) then
      ex:fast_started(1)
      return id
    end
    -- refused by the engine: the executor's path reports it as a result
  end
  local job = fire.job(url, o, headers)
  job.id, job.tag, job.spooled = id, id, self.spool ~= nil
  if delay and delay > 0 then job.due = core.now() + delay end
  ex:push(job)
  return id
end

--- Drives transfers for at most timeout seconds (default 0: never blocks)
-- and runs callbacks. Returns the number of attempts that finished.
function Dispatcher:poll(timeout)
  if self.closed then return 0 end
  fire.check_timeout(timeout, "poll")
  if self.spool then self.spool:sync() end -- group commit; compaction when due
  local n = self.ex:step(timeout or 0)
  settle(self)
  return n
end

--- Postbacks queued, delayed, waiting for a retry or in flight.
function Dispatcher:pending()
  if self.closed then return 0 end
  return self.ex:pending()
end

--- Polls until nothing is pending or timeout seconds passed.
-- @return true, or nil, err (kind "timeout") with postbacks still pending
function Dispatcher:wait(timeout)
  fire.check_timeout(timeout, "wait")
  local deadline = timeout and core.now() + timeout
  while self:pending() > 0 do
    local left = deadline and deadline - core.now() or 1
    if left <= 0 then
      return nil, errors.new("timeout", { message = ("%d postbacks still pending"):format(self:pending()) })
    end
    self:poll(math.min(left, 1))
  end
  if self.spool then self.spool:sync() end
  return true
end

--- Counters: delivered, failed, pending, and the executor's (retried,
-- inflight, queued, delayed, callback_errors, paused hosts).
function Dispatcher:stats()
  local s = self.ex:stats()
  s.delivered, s.failed = self.delivered, self.failed
  s.pending = self:pending()
  if self.spool then s.spool = self.spool:stats() end
  return s
end

--- Stops: transfers in flight are abandoned (with a spool they are sent
-- again by the next dispatcher). Safe to call twice.
function Dispatcher:close()
  if self.closed then return end
  self.closed = true
  self.ex:close()
  if self.spool then self.spool:close() end
end
Dispatcher.__close = Dispatcher.close
Dispatcher.__gc = Dispatcher.close

return M
