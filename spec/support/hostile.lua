-- A hostile HTTP server for the reliability specs and benchmarks: the
-- receivers and API servers a delivery engine meets on a bad day. Loopback
-- only, one process, select-based, many connections at once.
--
--   lua5.4 spec/support/hostile.lua [--port 0] [--host 127.0.0.1]
--
-- Prints "hostile listening on http://127.0.0.1:PORT" once it listens. The
-- first segment of the request path picks the behaviour (so a client's
-- base_url can be http://127.0.0.1:PORT/silent):
--
--   /ok...                 204, keep-alive
--   /slow-ok...?ms=N       204 after N milliseconds
--   /silent...             reads the request and never answers (the
--                          connection stays open until the client leaves)
--   /drip...               a valid 200 response, one byte a second
--   /chunked-forever...    200 chunked, a small chunk every 20 ms, never ending
--   /huge-body...          200 with Content-Length 1 GiB, written as fast as the
--                          client reads (generated block by block, never held)
--   /close-mid-headers...  "HTTP/1.1 200 OK\r\nContent-Le", then close
--   /invalid...            a garbage status line, then close
--   /huge-header...        200 with a 1 MiB header line
--   /echo-auth...          400 with an API envelope ({code, message, data})
--                          whose message echoes the Authorization header, the
--                          credentials it carries, and the request line
--   /echo-auth-text...     500 text/plain echoing the same
--   /echo-auth-ok...       200 text/plain echoing the same (a receiver that
--                          shows which credentials a postback carried)
--   /flaky/N/...           the first N requests to that exact path get 503,
--                          the later ones 204
--   /list/VARIANT/...      an Offerslook list answer with hostile paging:
--                          every page is full (`limit` rows, fresh ids, at any
--                          offset or id filter) and totalRows is 5, while
--                          totalPages is, by VARIANT: null, inf (1e309), huge
--                          (1000000), neg (-1), frac (2.5), string ("3");
--                          rowset-object and rowset-string send a rowset that
--                          is not an array (totalPages 1); ignore-after and
--                          desc ignore the key cursor (filters[id][GREATER_THAN]):
--                          ids 1..limit on every page, or each page's ids in
--                          descending order (totalPages agrees with totalRows)
--
-- Control (not counted): GET /_hostile/counts ({path = requests received,
-- query left out}), POST /_hostile/reset, POST /_hostile/shutdown.
--
-- From a spec (the server runs as a child process):
--   local hostile = require "hostile"
--   local h = hostile.start()
--   h.url, h.port; h:counts()["/ok/a"]; h:reset(); h:stop()
local socket = require "socket"
local cjson = require("cjson.safe").new()

local M = {}

local MAX_LINE = 32 * 1024 * 1024 -- a 2 MB URL sent by a broken client is still read and counted
local GiB = 1024 * 1024 * 1024
local BLOCK = ("x"):rep(64 * 1024)
local HUGE_HEADER = "HTTP/1.1 200 OK\r\nX-Huge: " .. ("h"):rep(1024 * 1024)
  .. "\r\nContent-Length: 2\r\n\r\nOK"
local REASONS = { [200] = "OK", [204] = "No Content", [400] = "Bad Request", [404] = "Not Found",
                  [500] = "Internal Server Error", [503] = "Service Unavailable" }

local function b64decode(s)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local bits = {}
  for ch in s:gmatch("[%w%+/]") do
    local v = chars:find(ch, 1, true) - 1
    for i = 5, 0, -1 do bits[#bits + 1] = math.floor(v / 2 ^ i) % 2 end
  end
  local out = {}
  for i = 1, #bits - 7, 8 do
    local c = 0
    for j = 0, 7 do c = c * 2 + bits[i + j] end
    out[#out + 1] = string.char(c)
  end
  return table.concat(out)
end

local function url_decode(s)
  return (s:gsub("+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function query_table(q)
  local t = {}
  for pair in (q or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    t[url_decode(k)] = url_decode(v)
  end
  return t
end

local function response(status, body, content_type, extra)
  local lines = { ("HTTP/1.1 %d %s"):format(status, REASONS[status] or "Status") }
  if content_type then lines[#lines + 1] = "Content-Type: " .. content_type end
  lines[#lines + 1] = "Content-Length: " .. #body
  if extra then lines[#lines + 1] = extra end
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end

-- ---- a connection, driven by a coroutine ------------------------------------

local Conn = {}
Conn.__index = Conn

-- Waits until the socket is readable ("r"), writable ("w"), or a time ("t").
local function wait(kind, sock, t)
  return coroutine.yield(kind, sock, t)
end

function Conn:fill()
  local data, err, partial = self.sock:receive(65536)
  data = data or partial
  if data and #data > 0 then
    self.parts[#self.parts + 1] = data
    self.size = self.size + #data
    return true
  end
  if err == "closed" then return nil end
  wait("r", self.sock)
  return true
end

function Conn:buffer()
  if #self.parts > 1 then self.parts = { table.concat(self.parts) } end
  return self.parts[1] or ""
end

function Conn:take(n)
  local buf = self:buffer()
  local out = buf:sub(1, n)
  local rest = buf:sub(n + 1)
  self.parts, self.size = { rest }, #rest
  return out
end

-- One line (CRLF or LF), or nil when the peer left or the line is too long.
function Conn:line()
  local from = 1
  while true do
    local buf = self:buffer()
    local s, e = buf:find("\r?\n", from)
    if s then
      local line = buf:sub(1, s - 1)
      self:take(e)
      return line
    end
    from = math.max(1, #buf - 1)
    if #buf > MAX_LINE then return nil end
    if not self:fill() then return nil end
  end
end

function Conn:bytes(n)
  while self.size < n do
    if not self:fill() then return nil end
  end
  return self:take(n)
end

-- Sends everything (waiting while the socket is full); nil when the peer left.
function Conn:send(data)
  local i = 1
  while i <= #data do
    local last, err, partial = self.sock:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = (partial or i - 1) + 1
      wait("w", self.sock)
    else
      return nil
    end
  end
  return true
end

function Conn:sleep(seconds)
  wait("t", nil, socket.gettime() + seconds)
end

-- Reads until the peer closes (what a silent server does with its time).
function Conn:drain()
  while self:fill() do
    self.parts, self.size = {}, 0
  end
end

-- ---- the server --------------------------------------------------------------

local Server = {}
Server.__index = Server

function M.new(opts)
  opts = opts or {}
  return setmetatable({ host = opts.host or "127.0.0.1", port = opts.port or 0, counts = {},
                        threads = {}, stop = false }, Server)
end

-- One request: {method, target, path, query, line, headers, body}, false
-- when it is not HTTP, nil when the connection is over.
function Server:read_request(c)
  local line = c:line()
  while line == "" do line = c:line() end
  if not line then return nil end
  local method, target = line:match("^(%u+) (%S+) HTTP/%d%.%d$")
  if not method then return false end
  local req = { method = method, target = target, line = line, headers = {} }
  req.path, req.query = target:match("^([^?]*)%??(.*)$")
  if not req.path:find("^/_hostile/") then
    self.counts[req.path] = (self.counts[req.path] or 0) + 1
  end
  while true do
    local h = c:line()
    if not h then return nil end
    if h == "" then break end
    local k, v = h:match("^([^:]+):%s*(.-)%s*$")
    if k then req.headers[k:lower()] = v end
  end
  local len = tonumber(req.headers["content-length"] or "0") or 0
  if len > 0 then
    req.body = c:bytes(len)
    if not req.body then return nil end
  end
  return req
end

-- The message an API server that trusts its logs too much would send back.
local function echo_text(req)
  local auth = req.headers.authorization or "(none)"
  local creds = auth:match("^[Bb]asic%s+(%S+)")
  return ("unauthorized: got Authorization: %s (credentials %s) for %s"):format(
    auth, creds and b64decode(creds) or "?", req.line)
end

local function list_row(id)
  return { id = id, offer_id = 1, affiliate_id = 7, type = 2, status = "approved",
           code = "https://t.example/pb?c={click_id}", create_time = 1700000000, update_time = 1700000000 }
end

local TOTAL_PAGES = { null = "null", inf = "1e309", huge = "1000000", neg = "-1", frac = "2.5",
                      string = '"3"', ["rowset-object"] = "1", ["rowset-string"] = "1" }

-- An Offerslook list answer that lies about its paging.
local function list_answer(variant, req)
  local q = query_table(req.query)
  local limit = math.floor(tonumber(q.limit) or 20)
  local page = math.floor(tonumber(q.offset) or 1)
  local after = tonumber(q["filters[id][GREATER_THAN]"])
  local first = after and (after + 1) or ((page - 1) * limit + 1)
  if variant == "ignore-after" then first = 1 end
  local rows = {}
  for k = 1, limit do rows[k] = list_row(first + k - 1) end
  if variant == "desc" then
    for k = 1, limit do rows[k] = list_row(first + limit - k) end
  end
  local rowset = rows
  if variant == "rowset-object" then rowset = { ["1"] = rows[1] } end
  if variant == "rowset-string" then rowset = "rows" end
  local data = { rowset = rowset, totalPages = "@TOTAL_PAGES@", totalRows = 5, offset = page, limit = limit }
  local text = assert(cjson.encode { code = 0, message = "Success", data = data })
  local pages = TOTAL_PAGES[variant]
  if variant == "ignore-after" or variant == "desc" then pages = tostring(math.ceil(5 / limit)) end
  text = text:gsub('"@TOTAL_PAGES@"', pages or "1")
  return response(200, text, "application/json")
end

-- Answers one request; returns true to keep the connection open.
function Server:answer(c, req)
  local mode = req.path:match("^/([^/]+)") or ""
  if req.path:find("^/_hostile/") then
    if req.path == "/_hostile/counts" then
      local text = next(self.counts) and assert(cjson.encode(self.counts)) or "{}"
      c:send(response(200, text, "application/json"))
    elseif req.path == "/_hostile/reset" then
      self.counts = {}
      c:send(response(204, ""))
    elseif req.path == "/_hostile/shutdown" then
      self.stop = true
      c:send(response(204, ""))
    else
      c:send(response(404, "no such control\n", "text/plain"))
    end
    return false
  elseif mode == "ok" then
    return c:send(response(204, ""))
  elseif mode == "slow-ok" then
    c:sleep((tonumber(query_table(req.query).ms) or 100) / 1000)
    return c:send(response(204, ""))
  elseif mode == "silent" then
    c:drain()
    return false
  elseif mode == "drip" then
    local text = response(200, "OK", "text/plain")
    for i = 1, #text do
      if not c:send(text:sub(i, i)) then return false end
      c:sleep(1)
    end
    return false
  elseif mode == "chunked-forever" then
    if not c:send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n") then return false end
    while not self.stop do
      if not c:send("10\r\n0123456789abcdef\r\n") then return false end
      c:sleep(0.02)
    end
    return false
  elseif mode == "huge-body" then
    if not c:send(("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"):format(GiB)) then
      return false
    end
    local sent = 0
    while sent < GiB and not self.stop do
      if not c:send(BLOCK) then return false end
      sent = sent + #BLOCK
    end
    return false
  elseif mode == "close-mid-headers" then
    c:send("HTTP/1.1 200 OK\r\nContent-Le")
    return false
  elseif mode == "invalid" then
    c:send("SPAM/7 banana split\r\nthis is not HTTP\r\n\r\n")
    return false
  elseif mode == "huge-header" then
    c:send(HUGE_HEADER)
    return false
  elseif mode == "echo-auth" then
    local body = assert(cjson.encode { code = 400, message = echo_text(req), data = cjson.null })
    return c:send(response(400, body, "application/json"))
  elseif mode == "echo-auth-text" then
    return c:send(response(500, echo_text(req) .. "\n", "text/plain"))
  elseif mode == "echo-auth-ok" then
    return c:send(response(200, echo_text(req) .. "\n", "text/plain"))
  elseif mode == "flaky" then
    local n = tonumber(req.path:match("^/flaky/(%d+)")) or 1
    if self.counts[req.path] <= n then return c:send(response(503, "try again\n", "text/plain")) end
    return c:send(response(204, ""))
  elseif mode == "list" then
    return c:send(list_answer(req.path:match("^/list/([^/]+)") or "null", req))
  end
  return c:send(response(404, "unknown mode\n", "text/plain"))
end

function Server:serve(sock)
  sock:settimeout(0)
  sock:setoption("tcp-nodelay", true)
  local c = setmetatable({ sock = sock, parts = {}, size = 0 }, Conn)
  while not self.stop do
    local req = self:read_request(c)
    if req == false then
      c:send(response(400, "bad request\n", "text/plain"))
      break
    end
    if not req then break end
    if not self:answer(c, req) then break end
    if (req.headers.connection or ""):lower() == "close" then break end
  end
  sock:close()
end

function Server:resume(co, ...)
  local ok, kind, sock, t = coroutine.resume(co, ...)
  if not ok then
    io.stderr:write("hostile: ", tostring(kind), "\n")
    self.threads[co] = nil
  elseif coroutine.status(co) == "dead" then
    self.threads[co] = nil
  else
    self.threads[co] = { wait = kind, sock = sock, until_ = t }
  end
end

function Server:start()
  if self.host ~= "127.0.0.1" and self.host ~= "localhost" and self.host ~= "::1" then
    error("the hostile server only listens on loopback", 0)
  end
  local srv = assert(socket.bind(self.host, self.port, 1024))
  srv:settimeout(0)
  self.listener = srv
  local _, port = srv:getsockname()
  self.port = tonumber(port)
  return self.port
end

-- One turn: waits at most `timeout` seconds for sockets or timers.
function Server:step(timeout)
  local recvt, sendt, by_sock = { self.listener }, {}, {}
  local now = socket.gettime()
  local wake = now + timeout
  for co, w in pairs(self.threads) do
    if w.wait == "r" then
      recvt[#recvt + 1] = w.sock
      by_sock[w.sock] = co
    elseif w.wait == "w" then
      sendt[#sendt + 1] = w.sock
      by_sock[w.sock] = co
    elseif w.until_ < wake then
      wake = w.until_
    end
  end
  local readable, writable = socket.select(recvt, sendt, math.max(0, wake - now))
  for _, s in ipairs(readable or {}) do
    if s == self.listener then
      for _ = 1, 64 do
        local client = self.listener:accept()
        if not client then break end
        self:resume(coroutine.create(function() self:serve(client) end))
      end
    elseif by_sock[s] then
      local co = by_sock[s]
      by_sock[s] = nil
      self:resume(co)
    end
  end
  for _, s in ipairs(writable or {}) do
    local co = by_sock[s]
    if co then
      by_sock[s] = nil
      self:resume(co)
    end
  end
  now = socket.gettime()
  for co, w in pairs(self.threads) do
    if w.wait == "t" and w.until_ <= now then self:resume(co) end
  end
end

function Server:run()
  while not self.stop do self:step(0.5) end
  self.listener:close()
end

--- Command line entry: main(argv) -> exit status.
function M.main(argv)
  local opts, i = {}, 1
  while i <= #argv do
    local a, v = argv[i], argv[i + 1]
    if a == "--port" then opts.port = tonumber(v)
    elseif a == "--host" then opts.host = v
    else
      io.stderr:write("hostile: unknown option ", tostring(a), "\n")
      return 2
    end
    i = i + 2
  end
  local server = M.new(opts)
  local started, port = pcall(server.start, server)
  if not started then
    io.stderr:write("hostile: ", tostring(port), "\n")
    return 2
  end
  io.stdout:write(("hostile listening on http://127.0.0.1:%d\n"):format(port))
  io.stdout:flush()
  server:run()
  return 0
end

-- ---- from a spec: the server as a child process -------------------------------

local Proc = {}
Proc.__index = Proc

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- This file's own path.
local function script_path()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  if src:sub(1, 1) ~= "/" then
    local p = assert(io.popen("pwd"))
    src = p:read("*l") .. "/" .. src
    p:close()
  end
  return src
end

--- Starts the server in its own process on a free loopback port.
-- opts: lua (interpreter, default lua5.4).
function M.start(opts)
  opts = opts or {}
  local lua = opts.lua or os.getenv("POSTBACK_MOCK_LUA") or "lua5.4"
  -- no sanitizer preload and no module paths meant for the interpreter under test
  local inner = ("echo $$; exec env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 %s %s --port 0")
    :format(lua, shell_quote(script_path()))
  local pipe = assert(io.popen("sh -c " .. shell_quote(inner) .. " 2>/dev/null", "r"))
  local pid = pipe:read("*l")
  local line = pipe:read("*l")
  local port = line and line:match("listening on http://127%.0%.0%.1:(%d+)")
  if not port then
    pipe:close()
    error("hostile server did not start: " .. tostring(line), 2)
  end
  return setmetatable({ pid = tonumber(pid), port = tonumber(port), pipe = pipe,
                        url = "http://127.0.0.1:" .. port }, Proc)
end

--- One request on a fresh connection: status, body.
function M.http(port, method, path)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(10)
  assert(c:send(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"):format(method, path)))
  local status = tonumber((assert(c:receive("*l"))):match("^HTTP/%d%.%d (%d+)"))
  local len
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    len = tonumber(h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")) or len
  end
  local body = (len and len > 0) and c:receive(len) or ""
  c:close()
  return status, body
end

--- Requests received per path (query left out) since the start or the last reset.
function Proc:counts()
  local _, body = M.http(self.port, "GET", "/_hostile/counts")
  return assert(cjson.decode(body))
end

--- Requests received on one path.
function Proc:count(path)
  return self:counts()[path] or 0
end

function Proc:reset()
  M.http(self.port, "POST", "/_hostile/reset")
end

--- Stops the server (shutdown request, then SIGKILL if it lingers). Safe twice.
function Proc:stop()
  if not self.pid then return end
  pcall(M.http, self.port, "POST", "/_hostile/shutdown")
  os.execute(("for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 %d 2>/dev/null || exit 0; sleep 0.1; done; "
    .. "kill -9 %d 2>/dev/null"):format(self.pid, self.pid))
  pcall(self.pipe.close, self.pipe)
  self.pid = nil
end
Proc.__gc = Proc.stop

-- Run as a script (not when required as a module).
if ... ~= "hostile" and arg and arg[0] and arg[0]:find("hostile%.lua$") then
  os.exit(M.main(arg))
end

return M
