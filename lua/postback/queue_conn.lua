--- The queue's Redis connection: pipelined commands on one non-blocking
-- socket (postback.redis, on hiredis), replies matched in order, reconnects
-- with backoff, and the Lua scripts the queue and its workers run.
--
-- Two ways to use it. A worker drives it without ever waiting: `step()`
-- makes what progress the socket allows and runs the callbacks of the
-- replies that arrived; `send(args, cb)` queues a command. The queue and
-- the command line wait with a bound: `call(args, timeout)`.
--
-- A callback gets (value), (nil, message) for an error reply, or
-- (nil, nil, why) when the connection was lost before the reply came.
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"

local M = {}

--- The C module, or nil and a message saying how to get it.
function M.driver()
  local ok, mod = pcall(require, "postback.redis")
  if ok then return mod end
  return nil, errors.new("transport", { code = "no_driver", message =
    "the queue needs the postback.redis module (hiredis): build it with make, "
    .. "or luarocks make postback-redis-scm-1.rockspec" })
end

--- Raises inside an nginx request or timer handler: a worker or a queue
-- connection waits on its socket outside nginx's event loop.
function M.refuse_in_nginx(what, level)
  if type(ngx) == "table" and type(ngx.get_phase) == "function" then
    local ok, phase = pcall(ngx.get_phase)
    if ok and phase ~= "init" then
      error(("postback: %s runs outside nginx: its Redis socket would stall the nginx worker. "
        .. "Produce entries with lua-resty-redis (XADD, see the README's queue section) "
        .. "and run workers as their own processes (postback worker)"):format(what), (level or 1) + 1)
    end
  end
end

local unescape = util.unescape

--- Reads redis://[[user]:password@]host[:port][/db] or
-- unix:///path/to/socket[?db=N]: {host=, port=, path=, db=, username=,
-- password=}, or nil, err.
function M.parse_url(url)
  local function bad(why)
    return nil, errors.new("validation", { code = "invalid_url", field = "redis",
      message = "redis URL " .. why .. " (redis://[:password@]host[:port][/db] or unix:///path[?db=N])" })
  end
  if type(url) ~= "string" then return bad("must be a string") end
  if url:find("[%c%s]") then return bad("has spaces or control characters") end
  local t = { db = 0 }
  local upath, uquery = url:match("^unix://(/[^?#]*)%??([^#]*)$")
  if upath then
    t.path = unescape(upath)
    local db = uquery:match("db=(%d+)")
    if db then t.db = tonumber(db) end
    if #t.path < 2 then return bad("has no socket path") end
    return t
  end
  local rest = url:match("^redis://(.*)$")
  if not rest then return bad("must start with redis:// or unix://") end
  local auth, hostpart = rest:match("^([^@/]*)@(.*)$")
  if auth then
    local user, pass = auth:match("^([^:]*):(.*)$")
    if user then
      if user ~= "" then t.username = unescape(user) end
      t.password = unescape(pass)
    else
      t.password = unescape(auth)
    end
    rest = hostpart
  end
  local hostport, path = rest:match("^([^/?#]*)(.*)$")
  local host, port = hostport:match("^%[([%x:.]+)%]:?(%d*)$")
  if not host then host, port = hostport:match("^([^:]+):?(%d*)$") end
  if not host or host == "" then return bad("has no host") end
  t.host = host
  t.port = port ~= "" and tonumber(port) or 6379
  if t.port < 1 or t.port > 65535 then return bad("has a port out of range") end
  local db = path:match("^/(%d+)")
  if db then
    t.db = tonumber(db)
  elseif path ~= "" and path ~= "/" and not path:match("^/?%?") then
    return bad("has a database that is not a number")
  end
  return t
end

--- Where a parsed URL points, without its password (for messages).
function M.describe(t)
  if t.path then return "unix://" .. t.path end
  local h = t.host:find(":", 1, true) and ("[" .. t.host .. "]") or t.host
  return ("redis://%s:%d/%d"):format(h, t.port, t.db)
end

local Conn = {}
Conn.__index = Conn

--- A connection to the server at `target` (a parsed URL). opts:
-- timeout (seconds: connecting, and waiting for a reply beyond a command's
-- own BLOCK; default 5), backoff_base (0.1), backoff_max (5),
-- on_ready(conn) (after every successful (re)connect).
function M.new(target, opts)
  local driver, err = M.driver()
  if not driver then return nil, err end
  opts = opts or {}
  return setmetatable({
    driver = driver, target = target, where = M.describe(target),
    timeout = opts.timeout or 5, backoff_base = opts.backoff_base or 0.1,
    backoff_max = opts.backoff_max or 5, on_ready = opts.on_ready,
    state = "down", retry_at = 0, failures = 0, reconnects = 0,
    cbs = {}, head = 1, tail = 0,
  }, Conn)
end

--- Commands sent whose replies have not come yet.
function Conn:outstanding()
  return self.tail - self.head + 1
end

function Conn:ready()
  return self.state == "ready"
end

-- Queues a callback for the next reply. block = seconds the server may
-- legitimately hold the reply (a BLOCK option).
local function expect(self, cb, block)
  if self.head > self.tail then self.progress = core.now() end
  self.tail = self.tail + 1
  self.cbs[self.tail] = { cb, block or 0 }
end

--- Drops the connection; every callback waiting gets (nil, nil, why); the
-- next connect is tried after a backoff with jitter.
function Conn:fail(why, kind)
  if self.c then self.c:close() end
  self.c = nil
  local was = self.state
  self.state = "down"
  self.last_error = why
  self.fail_kind = kind or "transport"
  self.failures = self.failures + 1
  local cap = math.min(self.backoff_max, self.backoff_base * 2 ^ math.min(self.failures - 1, 30))
  self.retry_at = core.now() + cap * (0.5 + 0.5 * math.random())
  if was == "ready" then self.reconnects = self.reconnects + 1 end
  local cbs = self.cbs
  local head, tail = self.head, self.tail
  self.cbs, self.head, self.tail = {}, 1, 0
  for i = head, tail do
    local entry = cbs[i]
    if entry[1] then entry[1](nil, nil, why) end
  end
end

-- The handshake: AUTH, SELECT, and a PING whose answer makes us ready.
local function handshake(self)
  local t = self.target
  local function check(v, rerr, why)
    if v == nil then
      -- A refused AUTH or SELECT ends this connection; it is tried again later.
      if self.state ~= "down" then self:fail(rerr or why) end
    end
  end
  if t.password then
    if t.username then self:send({ "AUTH", t.username, t.password }, check, nil, true)
    else self:send({ "AUTH", t.password }, check, nil, true) end
  end
  if t.db and t.db ~= 0 then self:send({ "SELECT", t.db }, check, nil, true) end
  self:send({ "PING" }, function(v, rerr, why)
    if v == nil then return check(v, rerr, why) end
    self.state = "ready"
    self.failures = 0
    self.last_error = nil
    self.ready_at = core.now()
    if self.on_ready then self.on_ready(self) end
  end, nil, true)
end

--- Starts connecting now (when down).
function Conn:open()
  if self.state ~= "down" then return end
  local t = self.target
  local c, err
  if t.path then c, err = self.driver.connect_unix(t.path)
  else c, err = self.driver.connect(t.host, t.port) end
  if not c then
    self.state = "connecting" -- so fail() counts it as a failed attempt
    return self:fail("cannot connect to " .. self.where .. ": " .. tostring(err))
  end
  self.c = c
  self.state = "connecting"
  self.connect_started = core.now()
end

--- Queues a command (an array of strings and numbers). Only when the
-- connection is up (ready(), or during the handshake with `early`).
-- block = seconds the server may hold the reply (for BLOCK commands).
function Conn:send(args, cb, block, early)
  if not self.c or (self.state ~= "ready" and not early) then
    if cb then cb(nil, nil, "not connected to " .. self.where) end
    return false
  end
  local ok, err = self.c:append(args)
  if not ok then
    if cb then cb(nil, nil, err) end
    return false
  end
  expect(self, cb, block)
  return true
end

--- Makes what progress the socket allows now, without waiting: connects,
-- writes, reads, and runs the callbacks of the replies that came.
-- autoconnect: start a connect when down and the backoff has passed.
function Conn:step(autoconnect)
  local now = core.now()
  if self.state == "down" then
    if autoconnect and now >= self.retry_at then self:open() end
    if self.state == "down" then return end
  end
  local c = self.c
  if self.state == "connecting" then
    local ok, err = c:established(0)
    if ok == nil then return self:fail("cannot connect to " .. self.where .. ": " .. tostring(err)) end
    if not ok then
      if now - self.connect_started > self.timeout then
        self:fail("cannot connect to " .. self.where .. ": timed out", "timeout")
      end
      return
    end
    self.state = "handshake"
    handshake(self)
  end
  if self.head <= self.tail then
    local readable = c:wait(true, false, 0)
    if readable then
      local ok, err = c:read()
      if not ok then return self:fail("connection to " .. self.where .. " lost: " .. tostring(err)) end
      while self.c == c do
        local got, value, rerr = c:reply()
        if got == nil then return self:fail("bad reply from " .. self.where .. ": " .. tostring(value)) end
        if not got then break end
        local i = self.head
        local entry = self.cbs[i]
        self.cbs[i] = nil
        self.head = i + 1
        self.progress = core.now()
        if entry and entry[1] then entry[1](value, rerr) end
      end
      if self.c ~= c then return end
    end
  end
  if self.c == c then
    local ok, err = c:write()
    if ok == nil then return self:fail("connection to " .. self.where .. " lost: " .. tostring(err)) end
    if self.head <= self.tail then
      local entry = self.cbs[self.head]
      if core.now() - self.progress > self.timeout + entry[2] then
        self:fail(("no answer from %s in %gs"):format(self.where, self.timeout + entry[2]), "timeout")
      end
    end
  end
end

--- Waits at most `timeout` seconds for the socket to have something to do
-- (a reply to read, room to write, the connect to finish).
function Conn:wait(timeout)
  if timeout <= 0 then return end
  local c = self.c
  if not c then
    local left = self.retry_at - core.now()
    if left > 0 then core.sleep(math.min(left, timeout)) end
    return
  end
  if self.state == "connecting" then
    c:established(timeout)
    return
  end
  c:wait(self.head <= self.tail, c:pending() > 0, timeout)
end

--- Sends one command and waits for its reply, at most `timeout` seconds
-- (connecting included): value, or nil, err (err.kind "api" for an error
-- reply, with err.code the reply's first word; "transport" or "timeout").
function Conn:call(args, timeout)
  local deadline = core.now() + (timeout or self.timeout)
  if self.state == "ready" and self.head > self.tail and self.c:wait(true, false, 0) then
    -- Readable with nothing asked: the server closed this idle connection
    -- (a restart). Find out before sending, and start afresh.
    local ok, err = self.c:read()
    if not ok then self:fail("connection to " .. self.where .. " lost: " .. tostring(err)) end
  end
  if self.state == "down" then
    self.retry_at = 0
    self:open()
  end
  while self.state ~= "ready" do
    self:step(false)
    if self.state == "down" then
      return nil, errors.new(self.fail_kind or "transport", { message = self.last_error or ("cannot connect to " .. self.where) })
    end
    local left = deadline - core.now()
    if left <= 0 then
      self:fail("timed out connecting")
      return nil, errors.new("timeout", { message = "timed out connecting to " .. self.where })
    end
    if self.state ~= "ready" then self:wait(math.min(left, 0.05)) end
  end
  local done, value, rerr, why = false, nil, nil, nil
  self:send(args, function(v, e, w) done, value, rerr, why = true, v, e, w end)
  while not done do
    self:step(false)
    if done then break end
    local left = deadline - core.now()
    if left <= 0 then
      self:fail("timed out")
      return nil, errors.new("timeout", { message = ("no answer from %s to %s"):format(self.where, tostring(args[1])) })
    end
    self:wait(math.min(left, 0.5))
  end
  if rerr then
    return nil, errors.new("api", { code = rerr:match("^(%S+)"), message = "Redis: " .. rerr })
  end
  if why then return nil, errors.new(self.state == "down" and self.fail_kind or "transport", { message = why }) end
  return value
end

function Conn:close()
  if self.c then self.c:close() end
  self.c = nil
  self.state = "closed"
  self.cbs, self.head, self.tail = {}, 1, 0
end

--- Decodes a stream entry's field list {k1, v1, k2, v2, ...} into a table.
function M.fields(list)
  local t = {}
  if type(list) ~= "table" then return t end
  for i = 1, #list - 1, 2 do t[list[i]] = list[i + 1] end
  return t
end

--- The Redis keys of a stream name.
function M.keys(stream)
  return {
    stream = stream,
    delayed = stream .. ":delayed",
    dead = stream .. ":dead",
    log = stream .. ":log",
    lock = stream .. ":mover",
  }
end

-- ---- scripts (Lua inside Redis, run with EVAL: nothing to reload after a
-- restart) ---------------------------------------------------------------

local NOW = [=[
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
]=]

--- Outcomes of attempts, in one go. KEYS: stream, delayed, dead, log.
-- ARGV: group, consumer, log cap (0: no log), JSON {o = outcomes, l = logs}.
-- An outcome: {k = "a" (delivered) | "r" (retry) | "d" (dead), s = stream
-- id, m = the delayed member (r) or the dead entry's fields (d), d = delay
-- ms (r), q = 1 when an earlier try of this flush may have been applied}.
-- A retry or dead letter is skipped when another worker owns the entry now
-- (it will decide), or when a maybe-applied flush finds it gone already.
-- Returns {applied, skipped}, or the NOGROUP error before writing anything.
M.FLUSH = NOW .. [=[
local S, Z, D, L = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local g, me, logmax = ARGV[1], ARGV[2], tonumber(ARGV[3])
local check = redis.pcall('XPENDING', S, g)
if type(check) == 'table' and check.err then return check end
local b = cjson.decode(ARGV[4])
local acks, applied, skipped = {}, 0, 0
for _, o in ipairs(b.o) do
  local go, ack = true, true
  if o.k ~= 'a' then
    local p = redis.call('XPENDING', S, g, o.s, o.s, 1)
    if p[1] then
      if p[1][2] ~= me then go, ack = false, false end
    elseif o.q == 1 and #redis.call('XRANGE', S, o.s, o.s) == 0 then
      go = false
    end
  end
  if go then
    if o.k == 'r' then
      redis.call('ZADD', Z, now + o.d, o.m)
    elseif o.k == 'd' then
      local f = o.m
      f[#f + 1] = 'failed_at'
      f[#f + 1] = tostring(now)
      redis.call('XADD', D, '*', unpack(f))
    end
    applied = applied + 1
  else
    skipped = skipped + 1
  end
  if ack then acks[#acks + 1] = o.s end
end
for i = 1, #acks, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #acks) do chunk[#chunk + 1] = acks[j] end
  redis.call('XACK', S, g, unpack(chunk))
  redis.call('XDEL', S, unpack(chunk))
end
if logmax > 0 then
  for _, l in ipairs(b.l) do
    redis.call('XADD', L, 'MAXLEN', '~', logmax, '*', unpack(l))
  end
end
return {applied, skipped}
]=]

--- Moves due retries back to the stream. KEYS: stream, delayed, lock.
-- ARGV: lock owner, lock ms, limit. One worker at a time holds the short
-- lock; returns the number moved, or -1 when another worker holds it.
M.MOVE = NOW .. [=[
local S, Z, K = KEYS[1], KEYS[2], KEYS[3]
if not redis.call('SET', K, ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('GET', K) ~= ARGV[1] then return -1 end
end
local due = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  redis.call('XADD', S, '*', unpack(cjson.decode(m)))
  redis.call('ZREM', Z, m)
end
return #due
]=]

--- Keeps entries a worker still holds from looking idle (so nobody
-- reclaims them): KEYS: stream; ARGV: group, consumer, ids. Only entries
-- the consumer still owns are touched; returns how many.
M.TOUCH = [=[
local S, g, me = KEYS[1], ARGV[1], ARGV[2]
local n = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', S, g, ARGV[i], ARGV[i], 1, me)
  if p[1] then
    redis.call('XCLAIM', S, g, me, 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
]=]

--- Forgets consumers that have nothing pending and have not been seen for
-- ARGV[3] ms (workers long gone: a new process has a new name). KEYS:
-- stream; ARGV: group, the calling consumer, idle ms. Returns how many.
M.PRUNE = [=[
local S, g, me, idle = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local list = redis.pcall('XINFO', 'CONSUMERS', S, g)
if type(list) ~= 'table' or list.err then return 0 end
local n = 0
for _, c in ipairs(list) do
  local f = {}
  for i = 1, #c - 1, 2 do f[c[i]] = c[i + 1] end
  if f.name ~= me and tonumber(f.pending) == 0 and tonumber(f.idle) > idle then
    redis.call('XGROUP', 'DELCONSUMER', S, g, f.name)
    n = n + 1
  end
end
return n
]=]

--- {ready, pending, delayed, dead, oldest_age_ms}. KEYS: stream, delayed,
-- dead; ARGV: group. Acknowledged entries are deleted, so what the stream
-- holds is ready or pending. oldest_age_ms is -1 for an empty stream.
M.STATS = NOW .. [=[
local S, Z, D, g = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local len = redis.call('XLEN', S)
local pending = 0
local p = redis.pcall('XPENDING', S, g)
if type(p) == 'table' and not p.err then pending = p[1] end
local oldest = -1
local head = redis.call('XRANGE', S, '-', '+', 'COUNT', 1)[1]
if head then
  local enq
  local f = head[2]
  for i = 1, #f - 1, 2 do
    if f[i] == 'enqueued' then enq = tonumber(f[i + 1]) end
  end
  enq = enq or tonumber(string.match(head[1], '^(%d+)'))
  oldest = math.max(0, now - enq)
end
return {len - pending, pending, redis.call('ZCARD', Z), redis.call('XLEN', D), oldest}
]=]

--- The STATS reply as {ready, pending, delayed, dead, oldest_age} (seconds,
-- 0 for an empty stream).
function M.stats(v)
  return { ready = v[1], pending = v[2], delayed = v[3], dead = v[4], oldest_age = v[5] < 0 and 0 or v[5] / 1000 }
end

--- Dead letters back to the stream, as new entries with no attempt made.
-- KEYS: stream, dead; ARGV: limit, then ids (none: the oldest `limit`).
-- Returns the number replayed.
M.REPLAY = NOW .. [=[
local S, D = KEYS[1], KEYS[2]
local entries = {}
if #ARGV > 1 then
  for i = 2, #ARGV do
    local e = redis.call('XRANGE', D, ARGV[i], ARGV[i])[1]
    if e then entries[#entries + 1] = e end
  end
else
  entries = redis.call('XRANGE', D, '-', '+', 'COUNT', tonumber(ARGV[1]))
end
local keep = { url = true, headers = true, id = true, enqueued = true }
for _, e in ipairs(entries) do
  local f = {}
  local src = e[2]
  for i = 1, #src - 1, 2 do
    if keep[src[i]] then f[#f + 1] = src[i]; f[#f + 1] = src[i + 1] end
  end
  f[#f + 1] = 'attempt'
  f[#f + 1] = '0'
  redis.call('XADD', S, '*', unpack(f))
  redis.call('XDEL', D, e[1])
end
return #entries
]=]

--- Deletes every dead letter. KEYS: dead. Returns how many there were.
M.PURGE = [=[
local n = redis.call('XLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
]=]

--- Runs a script with EVAL: value, or nil, err (as call).
function Conn:eval_call(script, keys, argv, timeout)
  local args = { "EVAL", script, #keys }
  for _, k in ipairs(keys) do args[#args + 1] = k end
  for _, a in ipairs(argv) do args[#args + 1] = a end
  return self:call(args, timeout)
end

--- Queues a script (as send).
function Conn:eval_send(script, keys, argv, cb, block)
  local args = { "EVAL", script, #keys }
  for _, k in ipairs(keys) do args[#args + 1] = k end
  for _, a in ipairs(argv) do args[#args + 1] = a end
  return self:send(args, cb, block)
end

return M
