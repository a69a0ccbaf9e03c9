--- The dispatcher inside nginx (postback.dispatcher returns it there): the
-- same API as outside, on cosockets.
--
--   init_worker_by_lua_block {
--     d = postback.dispatcher { concurrency = 64, max_queue = 20000, spool = "/var/spool/postback" }
--   }
--   -- in a handler:
--   local id, err = d:fire(url, values)  -- nil, err (code "queue_full") when it cannot take it
--
-- Each worker has its own: one executor (the retry policy, per-host limits,
-- breaker of everywhere else) whose loop runs in a timer started with
-- ngx.timer.at(0, ...); that timer's coroutine owns the fixed pool of light
-- threads (at most `concurrency`) that send the postbacks on the cosocket
-- transport and its keep-alive pool. d:fire, from any handler, checks and
-- renders the postback, writes it to the spool, queues it and wakes the
-- loop; it never waits for the network. The queue is bounded (max_queue).
--
-- With `spool = DIR`, each worker keeps what it owes in its own spool file
-- in DIR ("postback-w<worker id>-<slot>.spool": the first one of its
-- worker id it can lock); appends are written before d:fire returns and
-- synced to the disk every sync_interval. When the worker exits (reload,
-- stop) the loop keeps sending for at most `grace` seconds, then leaves
-- what is left in its spool; the workers that come next take over the
-- spools nobody holds (the lock tells), retrying every second while an
-- old worker still holds one. Without a spool a reload loses what the
-- grace period did not deliver (each is reported to on_result).
local core = require "postback.core"
local errors = require "postback.errors"
local fire = require "postback.fire"
local spool = require "postback.spool"
local transport = require "postback.transport.ngx"
local util = require "postback.util"

local M = {}
local Dispatcher = {}
Dispatcher.__index = Dispatcher
Dispatcher.__name = "postback.dispatcher"

local DEFAULTS = fire.dispatcher_defaults { max_queue = 10000, grace = 5, sync_interval = 0.05 }

--- The options besides the firing ones (those of postback.dispatcher, and
-- grace and sync_interval).
M.OPTIONS = {
  grace = { kind = "number", min = 0, max = 86400 },
  sync_interval = { kind = "number", above = 0, max = 60 },
}
for k, v in pairs(fire.DISPATCHER_OPTIONS) do M.OPTIONS[k] = v end


local MAX_SLOTS = 64        -- spool files per worker id (generations alive at once)
local SCAN_LOCKED = 1       -- seconds between looks at a spool another worker holds
local SCAN_IDLE = 60        -- seconds between looks for orphaned spools

local function log(level, ...)
  ngx.log(level, "postback dispatcher: ", ...)
end

-- ---- spool files -------------------------------------------------------------

local function spool_name(dir, worker, slot)
  return ("%s/postback-w%d-%d.spool"):format(dir, worker, slot)
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- Creates the directory when missing (LuaJIT's FFI: nginx always has it).
local function make_dir(dir)
  local ok, ffi = pcall(require, "ffi")
  if not ok then return end
  pcall(ffi.cdef, "int mkdir(const char *path, unsigned int mode);")
  pcall(function() ffi.C.mkdir(dir, tonumber("700", 8)) end)
end

-- ---- outcomes -----------------------------------------------------------------

-- A callback that raised, without an on_error option: logged.
local function log_callback_error(info)
  log(ngx.ERR, tostring(info.callback), " raised: ", tostring(info.error))
end

-- A postback's final outcome (the executor's deliver).
local function finish(self, job, value, err)
  if self.jobs[job.id] then
    self.jobs[job.id] = nil
    self.npending = self.npending - 1
  end
  local r = fire.result(job, value, err)
  r.id = job.id
  if r.ok then
    self.delivered = self.delivered + 1
    -- a mark that cannot be written means a resend later, never a loss
    if job.spooled and self.spool then
      self.spool:done(job.id)
      self.dirty = true
    end
  else
    self.failed = self.failed + 1
    -- what may still succeed stays in the spool for the next worker
    if job.spooled and self.spool and fire.final_failure(r) then
      self.spool:done(job.id)
      self.dirty = true
    end
  end
  if self.opts.on_result then self.ex:call("on_result", self.opts.on_result, job, r) end
end

-- Queues an accepted postback (rendered URL, headers) under id.
local function enqueue(self, id, url, headers, delay, spooled)
  local job = fire.job(url, self.opts, headers)
  job.id, job.tag, job.spooled = id, id, spooled
  if delay and delay > 0 then job.due = core.now() + delay end
  self.jobs[id] = job
  self.npending = self.npending + 1
  self.ex:push(job)
end

-- Takes over the records of another worker's spool (opened, so locked by
-- us): each is added to ours, then marked done in it. Returns how many.
local function adopt(self, sp)
  local n = 0
  for fid, rec in fire.owed(sp) do
    local id, err = self.spool:add(rec)
    if not id then
      log(ngx.ERR, "cannot take over ", sp.path, ": ", tostring(err))
      break
    end
    enqueue(self, id, rec.url, rec.headers, 0, true)
    sp:done(fid)
    n = n + 1
  end
  self.spool:sync()
  sp:compact()
  sp:close()
  return n
end

-- Looks at the spools this worker answers for: those of its worker id, and
-- of the ids past the worker count that fall to it. Each one nobody holds
-- is taken over; one still held is looked at again in a second.
local function scan(self)
  local dir, w, count = self.spool_dir, self.worker, self.workers
  local locked = false
  local id = w
  while true do
    for slot = 0, MAX_SLOTS - 1 do
      local path = spool_name(dir, id, slot)
      if path ~= self.spool_path then
        if not exists(path) then break end
        local sp, err = spool.open(path, self.spool_opts)
        if sp then
          local n = adopt(self, sp)
          if n > 0 then
            self.adopted = self.adopted + n
            log(ngx.NOTICE, "took over ", n, " postbacks from ", path)
          end
        elseif err and err.code == "locked" then
          locked = true
        else
          log(ngx.ERR, "cannot open ", path, ": ", tostring(err))
        end
      end
    end
    id = id + count
    if not exists(spool_name(dir, id, 0)) then break end
  end
  self.next_scan = core.now() + (locked and SCAN_LOCKED or SCAN_IDLE)
end

-- Opens this worker's spool: the first slot of its worker id it can lock.
local function open_spool(self, dir)
  make_dir(dir)
  local last
  for slot = 0, MAX_SLOTS - 1 do
    local path = spool_name(dir, self.worker, slot)
    local sp, err = spool.open(path, self.spool_opts)
    if sp then return sp, path end
    last = err
    if not (err and err.code == "locked") then break end
  end
  return nil, errors.new("spool", { code = last and last.code, path = dir,
    message = ("inside nginx the spool option names a directory (one file per worker): %s"):format(
      tostring(last and last.message or last)) })
end

-- ---- the loop -------------------------------------------------------------------

-- Ends the loop: light threads stopped, the spool closed (what is owed
-- stays in it for the next worker), or without one each postback not
-- delivered reported to on_result.
local function shutdown(self)
  if self.stopped then return end
  self.stopped = true
  self.transport:close()
  local left = self.npending
  if self.spool then
    local ok, err = self.spool:close()
    if not ok then log(ngx.ERR, "closing the spool: ", tostring(err)) end
    if left > 0 then log(ngx.WARN, left, " postbacks left in ", self.spool_path, " for the next worker") end
  elseif left > 0 then
    log(ngx.WARN, left, " postbacks not delivered: the worker exited and there is no spool")
    local jobs = self.jobs
    self.jobs = {}
    self.npending = 0
    local on_result = self.opts.on_result
    for id, job in pairs(jobs) do
      self.failed = self.failed + 1
      if on_result then
        local err = errors.new("transport", { code = "abandoned", retryable = false, url = util.redact_url(job.url or job.req.url),
          message = "the worker exited before this postback was delivered (no spool)" })
        local r = fire.result(job, nil, err)
        r.id = id
        self.ex:call("on_result", on_result, job, r)
      end
    end
  end
end

local function loop(self)
  local ex, t, o = self.ex, self.transport, self.opts
  local exiting = ngx.worker.exiting
  while not self.closed do
    local now = core.now()
    if not self.grace_end and exiting() then
      self.grace_end = now + o.grace
      -- with a spool, only what is in flight is finished: the queue waits
      -- in the spool for the next worker (which takes it once we let go)
      if self.spool then ex:stop() end
      log(ngx.INFO, "worker exiting: ", self.npending, " postbacks pending, ", o.grace, " s to send them")
    end
    if self.grace_end and (self.npending == 0 or now >= self.grace_end
                           or (self.spool and ex.ninflight == 0)) then
      break
    end
    local wait = 1
    if self.spool then
      if not self.grace_end and now >= self.next_scan then
        scan(self)
        now = core.now()
      end
      if self.dirty then
        if now >= self.next_sync then
          self.spool:sync()
          self.dirty = false
          self.next_sync = now + o.sync_interval
        else
          wait = math.min(wait, self.next_sync - now)
        end
      end
      if not self.grace_end then wait = math.min(wait, math.max(self.next_scan - now, 0.001)) end
    end
    if self.grace_end then wait = math.min(wait, math.max(self.grace_end - now, 0.001)) end
    if self.npending == 0 then
      t:sleep(wait)
    elseif ex:step(wait) == 0 and ex.ninflight == 0 and ex:pending() == 0 then
      -- nothing the executor holds (a deliver still to come): never spin
      t:sleep(wait)
    end
  end
end

local function run(premature, self)
  if premature then -- the worker exits before the loop ever ran
    shutdown(self)
    return
  end
  self.running = true
  while not self.closed and not self.stopped do
    local ok, err = pcall(loop, self)
    if ok then break end
    log(ngx.ERR, "loop failed (restarting it): ", tostring(err))
    self.transport:sleep(0.1)
  end
  self.running = false
  shutdown(self)
end

-- ---- construction -----------------------------------------------------------------

--- Creates a dispatcher for this worker (see the module's comment); opts as
-- postback.dispatcher, plus grace (seconds an exiting worker keeps sending,
-- default 5) and sync_interval (seconds between spool syncs, default 0.05);
-- spool names a directory. max_queue defaults to 10000.
-- @return dispatcher, or nil, err (the spool cannot be opened, no timer)
function M.new(opts)
  local o = fire.options(opts, 1, "dispatcher", M.OPTIONS, DEFAULTS)
  if o.header_error then return nil, o.header_error end
  local phase = ngx.get_phase()
  if phase == "init" then
    error("postback.dispatcher: create it per worker (init_worker_by_lua*, or on first use in a handler), "
      .. "not in init_by_lua*", 2)
  end
  local self = setmetatable({
    opts = o, next_id = 0, delivered = 0, failed = 0, refused = 0, adopted = 0, recovered = 0,
    jobs = {}, npending = 0, next_sync = 0, next_scan = 0,
    worker = ngx.worker.id() or 0, workers = math.max(ngx.worker.count() or 1, 1),
  }, Dispatcher)
  local profile = fire.profile(o)
  profile.per_host = o.per_host
  local t = transport.new(profile)
  self.transport = t
  self.ex = fire.executor(o, t, function(job, value, err) finish(self, job, value, err) end,
                          { on_error = o.on_error or log_callback_error })
  if o.spool then
    local so = { on_error = o.on_error }
    for k, v in pairs(o.spool_options or {}) do so[k] = v end
    self.spool_opts = so
    self.spool_dir = o.spool:gsub("/+$", "")
    if self.spool_dir == "" then self.spool_dir = "/" end
    local sp, path = open_spool(self, self.spool_dir)
    if not sp then return nil, path end
    self.spool, self.spool_path = sp, path
    for id, rec in fire.owed(sp) do
      self.recovered = self.recovered + 1
      enqueue(self, id, rec.url, rec.headers, 0, true)
    end
  end
  local ok, err = ngx.timer.at(0, run, self)
  if not ok then
    if self.spool then self.spool:close() end
    return nil, errors.new("transport", { code = "no_timer",
      message = "cannot start the dispatcher's loop: ngx.timer.at failed: " .. tostring(err) })
  end
  return self
end

function Dispatcher:__tostring()
  return ("postback.dispatcher (nginx worker %d, %d pending)"):format(self.worker, self.npending)
end

local function full(message, code)
  return nil, errors.new("transport", { code = code, retryable = true, retry_after = 1, message = message })
end

--- Queues a postback and returns at once: its id, or nil, err (a bad
-- target; code "queue_full" when max_queue postbacks are pending;
-- "stopped" once the worker's loop ended; a spool that cannot be written).
function Dispatcher:fire(target, values, opts)
  if self.closed then error("dispatcher is closed", 2) end
  fire.check_dispatch(target, values, opts)
  local o = self.opts
  if self.stopped then
    self.refused = self.refused + 1
    return full("the dispatcher's loop has ended (the worker is exiting)", "stopped")
  end
  if self.npending >= o.max_queue then
    self.refused = self.refused + 1
    return full(("the dispatcher's queue is full (max_queue = %d)"):format(o.max_queue), "queue_full")
  end
  local headers = opts and opts.headers
  local url, err = fire.dispatch_url(o, target, values, opts)
  if not url then return nil, err end
  local id
  if self.spool then
    local serr
    id, serr = self.spool:add { url = url, headers = headers }
    if not id then return nil, serr end
    self.dirty = true
  else
    id = self.next_id + 1
    self.next_id = id
  end
  enqueue(self, id, url, headers, opts and opts.delay or o.delay, self.spool ~= nil)
  return id
end

--- Inside nginx the worker's timer drives the transfers: poll does nothing
-- and returns 0 (it never blocks), so code written for a loop runs as is.
function Dispatcher:poll(timeout)
  fire.check_timeout(timeout, "poll")
  return 0
end

--- Postbacks queued, delayed, waiting for a retry or in flight.
function Dispatcher:pending()
  return self.npending
end

--- Waits (ngx.sleep, in a handler or timer) until nothing is pending or
-- timeout seconds passed: true, or nil, err (kind "timeout"). Where
-- nginx cannot wait (init_worker) it only tells whether anything is pending.
function Dispatcher:wait(timeout)
  fire.check_timeout(timeout, "wait")
  local deadline = timeout and core.now() + timeout
  local step = 0.005
  while self.npending > 0 and not self.stopped do
    local left = deadline and deadline - core.now() or 1
    if left <= 0 or not util.in_nginx() then
      return nil, errors.new("timeout", { message = ("%d postbacks still pending"):format(self.npending) })
    end
    ngx.sleep(math.min(step, left))
    step = math.min(step * 2, 0.1)
  end
  if self.npending > 0 then
    return nil, errors.new("timeout", { message = ("%d postbacks still pending"):format(self.npending) })
  end
  return true
end

--- Counters: delivered, failed, pending, refused (d:fire calls turned
-- away: queue full or loop ended), recovered (found in this worker's spool
-- at start), adopted (taken over from other workers' spools), worker,
-- running (the loop), the executor's (retried, inflight, queued, delayed,
-- callback_errors, paused hosts), and spool (its sp:stats(), with path).
function Dispatcher:stats()
  local s = self.ex:stats()
  s.delivered, s.failed, s.pending = self.delivered, self.failed, self.npending
  s.refused, s.recovered, s.adopted = self.refused, self.recovered, self.adopted
  s.worker, s.running = self.worker, self.running == true
  if self.spool and not self.stopped then
    s.spool = self.spool:stats()
    s.spool.path = self.spool_path
  end
  return s
end

--- Stops this worker's dispatcher: transfers in flight are abandoned
-- (with a spool they are sent again by the next worker). Safe twice.
function Dispatcher:close()
  if self.closed then return end
  self.closed = true
  if self.running then
    self.transport:wake() -- the loop sees closed and shuts down
  else
    shutdown(self)
  end
end
Dispatcher.__close = Dispatcher.close

return M
