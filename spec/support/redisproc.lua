--- Starts a throwaway redis-server on a free loopback port, in a temporary
-- directory, with the append-only file synced on every write (so a kill -9
-- loses nothing Redis has answered), and talks to it over a plain socket:
-- the specs check what the queue wrote without going through it.
--
--   local redisproc = require "redisproc"
--   if not redisproc.available() then pending("redis-server is not installed") end
--   local r = redisproc.start()
--   r.url                          --> "redis://127.0.0.1:PORT/0"
--   r:cmd("XLEN", "pbq")           --> 3
--   r:kill()  r:restart()          -- kill -9, then the same port and directory
--   r:stop()                       -- and removes the directory
local socket = require "socket"

local M = {}
local Redis = {}
Redis.__index = Redis

local shell_quote = require("fixtures").sh

local function command_path(name)
  local p = io.popen("command -v " .. name .. " 2>/dev/null")
  local path = p and p:read("*l")
  if p then p:close() end
  return path ~= "" and path or nil
end

--- true when redis-server can be run here.
function M.available()
  return command_path("redis-server") ~= nil
end

--- A free loopback port (bound, then released: a small race, fine for tests).
M.free_port = require("nginxproc").free_port

-- ---- a minimal RESP client ---------------------------------------------------

local function encode(args)
  local out = { "*" .. #args .. "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

local function decode(sock)
  local line, err = sock:receive("*l")
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "+" then return rest end
  if kind == "-" then return { err = rest } end
  if kind == ":" then return tonumber(rest) end
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local data, rerr = sock:receive(n + 2)
    if not data then return nil, rerr end
    return data:sub(1, n)
  end
  if kind == "*" then
    local n = tonumber(rest)
    if n < 0 then return false end
    local list = {}
    for i = 1, n do
      local v, verr = decode(sock)
      if v == nil then return nil, verr end
      list[i] = v
    end
    return list
  end
  return nil, "bad reply line: " .. line
end

--- Connects to 127.0.0.1:port (nil, err when nothing answers).
function M.connect(port, timeout)
  local s, err = socket.connect("127.0.0.1", port)
  if not s then return nil, err end
  s:settimeout(timeout or 10)
  s:setoption("tcp-nodelay", true)
  return s
end

--- One command on a socket: the reply (false for a nil reply, {err = msg}
-- for an error reply), or nil, err when the connection failed.
function M.command(sock, ...)
  local ok, err = sock:send(encode { ... })
  if not ok then return nil, err end
  return decode(sock)
end

-- ---- the server -------------------------------------------------------------

local function launch(self)
  local args = {
    "--port", tostring(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
    "--daemonize", "no", "--save", "", "--logfile", self.dir .. "/redis.log",
    "--protected-mode", "no",
  }
  if self.persist then
    for _, a in ipairs { "--appendonly", "yes", "--appendfsync", self.fsync } do args[#args + 1] = a end
  else
    for _, a in ipairs { "--appendonly", "no" } do args[#args + 1] = a end
  end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shell_quote(a) end
  -- No sanitizer preload for the server: it is not under test.
  local cmd = ("env -u LD_PRELOAD %s %s >/dev/null 2>&1 & echo $!"):format(
    shell_quote(self.bin), table.concat(quoted, " "))
  local p = assert(io.popen(cmd))
  self.pid = tonumber(p:read("*l"))
  p:close()
  local deadline = socket.gettime() + 20
  while socket.gettime() < deadline do
    local s = M.connect(self.port, 1)
    if s then
      local pong = M.command(s, "PING")
      s:close()
      if pong == "PONG" then return self end
    end
    socket.sleep(0.02)
  end
  error("redis-server did not start:\n" .. self:log(), 3)
end

--- opts: port (default a free one), persist (default true: appendonly),
-- fsync (default "always": every write on disk before Redis answers;
-- "everysec" for throughput runs).
function M.start(opts)
  opts = opts or {}
  local bin = assert(command_path("redis-server"), "redis-server is not installed")
  local dir = require("fixtures").tmpdir()
  local self = setmetatable({ bin = bin, dir = dir, port = opts.port or M.free_port(),
                              persist = opts.persist ~= false, fsync = opts.fsync or "always" }, Redis)
  self.url = ("redis://127.0.0.1:%d/0"):format(self.port)
  return launch(self)
end

--- The server's log (to explain failures).
function Redis:log()
  return require("fixtures").readfile(self.dir .. "/redis.log") or ""
end

--- One command on a connection kept for the specs (reopened when needed).
function Redis:cmd(...)
  if not self.sock then self.sock = assert(M.connect(self.port)) end
  local v, err = M.command(self.sock, ...)
  if v == nil then
    self.sock:close()
    self.sock = nil
    error("redis command failed: " .. tostring(err), 2)
  end
  return v
end

local function drop_sock(self)
  if self.sock then self.sock:close() self.sock = nil end
end

-- Waits until pid is gone (a zombie counts as gone: nobody may reap it here).
-- (Shell tools run without the sanitizer preload of the ASan suite.)
local function wait_gone(pid)
  os.execute(("env -u LD_PRELOAD sh -c 'for i in $(seq 1 200); do kill -0 %d 2>/dev/null || exit 0; "
    .. "ps -o stat= -p %d 2>/dev/null | grep -q Z && exit 0; sleep 0.02; done'"):format(pid, pid))
end
M.wait_gone = wait_gone

--- kill -9, as a crash would.
function Redis:kill()
  drop_sock(self)
  if self.pid then
    os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
    wait_gone(self.pid)
    self.pid = nil
  end
end

--- SIGSTOP / SIGCONT: a server that holds its connections and answers nothing.
function Redis:pause() os.execute("kill -STOP " .. self.pid) end
function Redis:resume() os.execute("kill -CONT " .. self.pid) end

--- Starts the server again on the same port and directory (after kill).
function Redis:restart()
  self:kill()
  return launch(self)
end

--- Stops the server and removes its directory. Safe twice.
function Redis:stop()
  self:kill()
  if self.dir then
    os.execute("rm -rf " .. shell_quote(self.dir))
    self.dir = nil
  end
end
Redis.__gc = Redis.stop

return M
