--- A non-blocking postback dispatcher, for game loops and servers.
--
--   local d = postback.dispatcher{ concurrency = 32, retries = 3, spool = "pb.spool" }
--   d:fire("https://t.example/pb?c={click_id}", { click_id = id })  -- returns at once
--   -- every tick:
--   d:poll(0)                                                        -- never blocks
--
-- With `spool = path`, every postback is written to an append-only,
-- checksummed file before it is sent, and marked done once delivered. A
-- dispatcher opened on the same file re-sends what was not delivered,
-- including what failed every retry: nothing is lost across a crash. The
-- spool is synced to disk once per poll (group commit); a torn last line is
-- skipped. Delivery is at least once: a postback in flight when the process
-- died is sent again, so receivers should dedupe on their click id.
local core = require "postback.core"
local errors = require "postback.errors"
local fire = require "postback.fire"
local json = require "postback.json"
local pump = require "postback.pump"

local M = {}
local Dispatcher = {}
Dispatcher.__index = Dispatcher
Dispatcher.__name = "postback.dispatcher"

local DEFAULTS = {}
for k, v in pairs(fire.DEFAULTS) do DEFAULTS[k] = v end
DEFAULTS.delay = 0

local function spool_write(self, record)
  local text = assert(json.encode(record))
  local ok, err = self.spool:append(text)
  if not ok then return nil, err end
  self.dirty = true
  return true
end

-- Reads a spool: the records added and not done, in id order; the last id.
local function spool_read(path)
  local f = io.open(path, "rb")
  if not f then return {}, 0, 0 end
  local added, order, last, skipped = {}, {}, 0, 0
  for line in f:lines() do
    local payload = core.spool_check(line)
    local rec = payload and json.decode(payload)
    if type(rec) == "table" and type(rec.id) == "number" then
      local id = json.tointeger(rec.id) or rec.id
      if id > last then last = id end
      if rec.op == "add" and type(rec.url) == "string" then
        if not added[id] then order[#order + 1] = id end
        added[id] = rec
      elseif rec.op == "done" then
        added[id] = false
      end
    elseif line ~= "" then
      skipped = skipped + 1 -- torn or corrupted: skipped, never fatal
    end
  end
  f:close()
  local pending = {}
  for _, id in ipairs(order) do
    if added[id] then pending[#pending + 1] = added[id] end
  end
  return pending, last, skipped
end

--- Creates a dispatcher.
-- opts: concurrency, per_host, retries, timeout, backoff_base, backoff_max,
-- delay (seconds before a postback's first try), spool (path),
-- on_result(result), on_attempt(info), ok_status, ok_body, headers.
-- @return dispatcher, or nil, err when the spool cannot be opened
function M.new(opts)
  local o = fire.options(opts, 1, "dispatcher", DEFAULTS)
  for _, k in ipairs { "on_result", "on_attempt" } do
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
    local pending, last, skipped = spool_read(o.spool)
    self.recovered, self.skipped = #pending, skipped
    -- Compact: rewrite the file with just what is still owed.
    local payloads = {}
    for i, rec in ipairs(pending) do payloads[i] = assert(json.encode(rec)) end
    local ok, err = core.spool_rewrite(o.spool, payloads)
    if not ok then return nil, errors.new("transport", { message = "spool: " .. err }) end
    local sp, oerr = core.spool_open(o.spool)
    if not sp then return nil, errors.new("transport", { message = "spool: " .. oerr }) end
    self.spool = sp
    self.next_id = last
    for _, rec in ipairs(pending) do
      local job = fire.job(rec.url, o, rec.headers)
      job.id, job.spooled = rec.id, true
      self.pump:push(job)
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
  self.next_id = self.next_id + 1
  local id = self.next_id
  local job = fire.job(url, o, headers)
  job.id = id
  if self.spool then
    local ok, serr = spool_write(self, { op = "add", id = id, url = url, headers = headers })
    if not ok then return nil, errors.new("transport", { message = "spool: " .. serr }) end
    job.spooled = true
  end
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
    if job.spooled then spool_write(self, { op = "done", id = job.id }) end
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
  if self.dirty then
    self.spool:sync()
    self.dirty = false
  end
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
  if self.dirty then
    self.spool:sync()
    self.dirty = false
  end
  return true
end

--- Stops: transfers in flight are abandoned (with a spool they are sent
-- again by the next dispatcher). Safe to call twice.
function Dispatcher:close()
  if self.closed then return end
  self.closed = true
  self.pump:close()
  if self.spool then
    self.spool:sync()
    self.spool:close()
  end
end
Dispatcher.__close = Dispatcher.close
Dispatcher.__gc = Dispatcher.close

return M
