--- A shared, durable delivery queue on Redis Streams.
--
--   local q = assert(postback.queue { redis = "redis://127.0.0.1:6379/0", stream = "postbacks" })
--   local id, err = q:push("https://t.example/pb?c={click_id}", { click_id = "ab-12" })
--
-- push renders the postback (as postback.fire does), checks the URL and
-- adds one self-contained entry with XADD; workers (postback.worker, or
-- `postback worker`) on any machine deliver it. The entry format is public
-- (README, "The shared queue"), so any Redis client can produce entries.
--
-- Keys, for a stream S: S (the entries ready or being delivered, read
-- through a consumer group), S:delayed (retries, a sorted set by due time),
-- S:dead (the dead letters, a stream), S:log (the delivery log, a capped
-- stream), S:mover (the short lock of whoever moves due retries).
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"
local json = require "postback.json"
local qc = require "postback.queue_conn"

local M = {}
local Queue = {}
Queue.__index = Queue
Queue.__name = "postback.queue"

-- Raises "bad argument"; level as error() would take it in the function
-- that calls this one (default 2: that function's caller is to blame).
local function argerror(n, fname, msg, level)
  util.argerror(n, fname, msg, (level or 2) + 1)
end

--- Reads the options the queue and the workers share: the parsed Redis
-- URL, the stream and group names, the Redis timeout. Raises on wrong
-- types; returns nil, err for a bad URL.
function M.common(opts, fname)
  -- the caller of postback.queue or postback.worker is to blame
  if type(opts) ~= "table" then argerror(1, fname, "table expected, got " .. type(opts), 3) end
  if type(opts.redis) ~= "string" then argerror(1, fname, "option redis must be a URL string", 3) end
  for _, k in ipairs { "stream", "group" } do
    local v = opts[k]
    if v ~= nil and (type(v) ~= "string" or v == "" or v:find("[%c%s]")) then
      argerror(1, fname, "option " .. k .. " must be a name without spaces", 3)
    end
  end
  local rt = opts.redis_timeout
  if rt ~= nil and (type(rt) ~= "number" or rt ~= rt or rt <= 0) then
    argerror(1, fname, "option redis_timeout must be a positive number", 3)
  end
  local target, err = qc.parse_url(opts.redis)
  if not target then return nil, err end
  return {
    target = target,
    stream = opts.stream or "postbacks",
    group = opts.group or "postback",
    redis_timeout = rt or 5,
  }
end

--- Creates a queue handle. opts: redis (URL, required), stream
-- ("postbacks"), group ("postback", for stats), timeout (seconds a push or
-- a stats call may wait for Redis, default 5).
-- @return queue, or nil, err (bad URL; the postback.redis module missing)
function M.new(opts)
  qc.refuse_in_nginx("postback.queue", 2)
  local c, err = M.common(opts, "queue")
  if not c then return nil, err end
  local t = opts.timeout
  if t ~= nil and (type(t) ~= "number" or t ~= t or t <= 0) then
    argerror(1, "queue", "option timeout must be a positive number")
  end
  local conn, cerr = qc.new(c.target, { timeout = t or c.redis_timeout })
  if not conn then return nil, cerr end
  local prefix = conn.driver.random_hex(6) or ("%.0f"):format(core.time() * 1e6)
  return setmetatable({
    conn = conn, stream = c.stream, group = c.group, keys = qc.keys(c.stream),
    timeout = t or c.redis_timeout, prefix = prefix, count = 0,
  }, Queue)
end

function Queue:__tostring()
  return ("postback.queue (%s, stream %s)"):format(self.conn.where, self.stream)
end

local template_mt = core.template_mt

-- Renders a target (a URL with macros, a template or a postback record)
-- and checks the URL: url, or nil, err.
local function render(target, values, opts)
  local t = target
  if type(target) == "table" then
    local ty = target.type
    if ty == 3 then
      return nil, errors.new("validation", { code = "type_not_allowed", field = "type",
        message = "type 3 (HTML Pixel) is HTML for a browser page and cannot be fired" })
    end
    if ty ~= nil and ty ~= 1 and ty ~= 2 then
      return nil, errors.new("validation", { code = "range", field = "type",
        message = "type must be 1 (Image Pixel) or 2 (Postback URL)" })
    end
    t = target.code or target.url
    if type(t) ~= "string" then
      return nil, errors.new("validation", { code = "required", field = "code", message = "the record has no code to fire" })
    end
  end
  local ropts
  if opts.encode or opts.missing then ropts = { encode = opts.encode, missing = opts.missing } end
  local url, err = core.render(t, values, ropts)
  if not url then return nil, err end
  local ok, why = core.check_url(url)
  if not ok then
    return nil, errors.new("validation", { code = "invalid_url", field = "url", message = "postback URL " .. why })
  end
  return url
end

--- Adds one postback: the entry's stream id once Redis has accepted it
-- (XADD), or nil, err. target: a URL with macros, a template or a record;
-- values: its macro values. opts: headers (extra request headers), id (the
-- dedupe id; default a unique one), encode, missing (as render).
-- A push that timed out may have been added: pushing again delivers at
-- least once.
function Queue:push(target, values, opts)
  if self.closed then error("queue is closed", 2) end
  local tt = type(target)
  if tt ~= "string" and tt ~= "table" and not (tt == "userdata" and getmetatable(target) == template_mt) then
    argerror(1, "push", "URL, template or record expected, got " .. tt)
  end
  if values ~= nil and type(values) ~= "table" then argerror(2, "push", "table expected, got " .. type(values)) end
  if opts ~= nil and type(opts) ~= "table" then argerror(3, "push", "table expected, got " .. type(opts)) end
  opts = opts or {}
  if opts.id ~= nil and (type(opts.id) ~= "string" or opts.id == "") then
    argerror(3, "push", "option id must be a non-empty string")
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then argerror(3, "push", "option headers must be a table") end
  local url, err = render(target, values, opts)
  if not url then return nil, err end
  local headers
  if opts.headers and next(opts.headers) then
    local herr = util.check_headers(opts.headers)
    if herr then return nil, herr end
    headers = {}
    for k, v in pairs(opts.headers) do
      if type(k) == "number" then
        local name, value = tostring(v):match("^([^:]+):%s*(.*)$")
        headers[name] = value
      else
        headers[tostring(k)] = tostring(v)
      end
    end
  end
  self.count = self.count + 1
  local id = opts.id or (self.prefix .. "-" .. self.count)
  local args = { "XADD", self.stream, "*", "url", url, "id", id, "attempt", "0",
                 "enqueued", ("%.0f"):format(core.time() * 1000) }
  if headers then
    args[#args + 1] = "headers"
    args[#args + 1] = assert(json.encode(headers))
  end
  local sid, cerr = self.conn:call(args, self.timeout)
  if not sid then return nil, cerr end
  return sid
end

-- A number from a Redis field or reply (integers stay integers).
local function number(v)
  local n = tonumber(v)
  if n == nil then return v end
  return json.tointeger(n) or n
end

--- {ready, pending, delayed, dead, oldest_age} (counts; oldest_age in
-- seconds since the entry at the stream's head was first enqueued, 0 for
-- an empty stream), or nil, err.
function Queue:stats()
  if self.closed then error("queue is closed", 2) end
  local k = self.keys
  local v, err = self.conn:eval_call(qc.STATS, { k.stream, k.delayed, k.dead }, { self.group }, self.timeout)
  if not v then return nil, err end
  return qc.stats(v)
end

-- The count option of dead and log (default 100), whole: raises for a
-- bad one, blaming the caller of fname.
local function page_count(opts, fname)
  if opts ~= nil and type(opts) ~= "table" then argerror(1, fname, "table expected, got " .. type(opts), 3) end
  local count = opts and opts.count or 100
  if type(count) ~= "number" or not (count >= 1 and count <= 2^53) then
    argerror(1, fname, "option count must be a positive number", 3)
  end
  return math.floor(count)
end

--- Dead letters, oldest first: a list of {sid, id, url, headers, attempt,
-- enqueued, failed_at, status, error}, or nil, err. opts: count (100),
-- after (a stream id: the page after it).
function Queue:dead(opts)
  if self.closed then error("queue is closed", 2) end
  opts = opts or {}
  local count = page_count(opts, "dead")
  local start = opts.after and ("(" .. opts.after) or "-"
  local list, err = self.conn:call({ "XRANGE", self.keys.dead, start, "+", "COUNT", count }, self.timeout)
  if not list then return nil, err end
  local out = {}
  for i, e in ipairs(list) do
    local f = qc.fields(e[2])
    out[i] = { sid = e[1], id = f.id, url = f.url, headers = f.headers and json.decode(f.headers) or nil,
               attempt = number(f.attempt or 0), enqueued = f.enqueued and number(f.enqueued) or nil,
               failed_at = f.failed_at and number(f.failed_at) or nil,
               status = f.status and number(f.status) or nil, error = f.error }
  end
  return out
end

--- Puts dead letters back on the stream as new entries (no attempt made):
-- those with the given stream ids (an id given twice counts once), or all
-- of them. Returns the number replayed, or nil, err.
function Queue:replay(ids)
  if self.closed then error("queue is closed", 2) end
  if ids ~= nil and type(ids) ~= "table" then argerror(1, "replay", "table expected, got " .. type(ids)) end
  local k = self.keys
  if ids then
    local argv, seen = { 0 }, {}
    for _, id in ipairs(ids) do
      id = tostring(id)
      if not seen[id] then
        seen[id] = true
        argv[#argv + 1] = id
      end
    end
    if #argv == 1 then return 0 end
    return self.conn:eval_call(qc.REPLAY, { k.stream, k.dead }, argv, self.timeout)
  end
  local total = 0
  while true do
    local n, err = self.conn:eval_call(qc.REPLAY, { k.stream, k.dead }, { 500 }, self.timeout)
    if not n then return nil, err end
    total = total + n
    if n < 500 then return total end
  end
end

--- Deletes dead letters: those with the given stream ids, or all of them.
-- Returns the number deleted, or nil, err.
function Queue:purge(ids)
  if self.closed then error("queue is closed", 2) end
  if ids ~= nil and type(ids) ~= "table" then argerror(1, "purge", "table expected, got " .. type(ids)) end
  if ids then
    if #ids == 0 then return 0 end
    local args = { "XDEL", self.keys.dead }
    for _, id in ipairs(ids) do args[#args + 1] = tostring(id) end
    return self.conn:call(args, self.timeout)
  end
  return self.conn:eval_call(qc.PURGE, { self.keys.dead }, {}, self.timeout)
end

--- The delivery log, newest first: a list of {at, id, sid, url, attempt,
-- status, outcome, error, seconds, worker}, or nil, err. opts: count (100).
function Queue:log(opts)
  if self.closed then error("queue is closed", 2) end
  local count = page_count(opts, "log")
  local list, err = self.conn:call({ "XREVRANGE", self.keys.log, "+", "-", "COUNT", count }, self.timeout)
  if not list then return nil, err end
  local out = {}
  for i, e in ipairs(list) do
    local f = qc.fields(e[2])
    out[i] = { at = tonumber(e[1]:match("^(%d+)")) / 1000, id = f.id, sid = f.sid, url = f.url,
               attempt = number(f.attempt or 0), status = f.status and number(f.status) or nil,
               outcome = f.outcome, error = f.error, seconds = f.ms and number(f.ms) / 1000 or nil,
               worker = f.worker }
  end
  return out
end

--- Closes the connection. Safe twice.
function Queue:close()
  if self.closed then return end
  self.closed = true
  self.conn:close()
end
Queue.__close = Queue.close
Queue.__gc = Queue.close

return M
