-- A postback receiver that logs every connection it accepts, for the
-- destination policy spec: it shows whether anything reached an address.
--
--   lua5.4 spec/support/countrecv.lua LOG PORT LIFETIME ADDRESS...
--
-- Listens on each ADDRESS (IPv4 or IPv6, "0.0.0.0" and "::" included) at
-- PORT (0 = a free port, then the same port on the others), prints
-- "listening PORT", and appends to LOG, one line each:
--   conn LOCAL-ADDRESS              a connection accepted (on that address)
--   req LOCAL-ADDRESS METHOD TARGET its request
-- It answers 200 "OK", except /to?u=URL (URL percent-encoded), which
-- answers 302 with Location: URL. Every answer closes the connection. It
-- exits after LIFETIME seconds whatever happens, so a spec that dies
-- leaves nothing behind.
--
-- From Lua (the receiver runs as a child process, in the caller's network
-- namespace):
--   local countrecv = require "countrecv"
--   local r = countrecv.start { "127.0.0.1", "::1" }   -- {lifetime =} as 2nd argument
--   r.port; r:lines() --> {"conn 127.0.0.1", "req 127.0.0.1 GET /x", ...}; r:stop()
local socket = require "socket"

local M = {}

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Runs the receiver: argv = {LOG, PORT, LIFETIME, ADDRESS...}.
function M.main(argv)
  local log_path, port, lifetime = argv[1], tonumber(argv[2]), tonumber(argv[3])
  assert(log_path and port and lifetime and argv[4], "usage: countrecv.lua LOG PORT LIFETIME ADDRESS...")
  local log = assert(io.open(log_path, "a"))
  local function note(line)
    log:write(line, "\n")
    log:flush()
  end

  local listeners = {}
  for i = 4, #argv do
    local host = argv[i]
    -- LuaSocket's tcp6 is IPv6 only: IPv4 has a listener of its own
    local s = host:find(":", 1, true) and assert(socket.tcp6()) or assert((socket.tcp4 or socket.tcp)())
    assert(s:setoption("reuseaddr", true))
    assert(s:bind(host, port))
    assert(s:listen(64))
    s:settimeout(0)
    if port == 0 then port = tonumber((select(2, s:getsockname()))) end
    listeners[#listeners + 1] = s
  end

  local function serve(c)
    c:settimeout(2)
    local here = tostring((c:getsockname()))
    note("conn " .. here)
    local line = c:receive("*l")
    if not line then return end
    local method, target = line:match("^(%S+) (%S+)")
    note(("req %s %s %s"):format(here, tostring(method), tostring(target)))
    repeat local h = c:receive("*l") until not h or h == ""
    local to = target and target:match("/to%?u=(.*)$") -- origin or absolute (proxy) form
    if to then
      c:send("HTTP/1.1 302 Found\r\nLocation: " .. decode(to) .. "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    else
      c:send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
    end
  end

  io.stdout:write(("listening %d\n"):format(port))
  io.stdout:flush()
  local deadline = socket.gettime() + lifetime
  while socket.gettime() < deadline do
    local ready = socket.select(listeners, nil, 0.2)
    for _, s in ipairs(ready) do
      local c = s:accept()
      if c then
        serve(c)
        c:close()
      end
    end
  end
end

local function script_path()
  return (debug.getinfo(1, "S").source:gsub("^@", ""))
end

local Proc = {}
Proc.__index = Proc

--- The log's lines so far.
function Proc:lines()
  local out = {}
  local f = io.open(self.log)
  if not f then return out end
  for line in f:lines() do out[#out + 1] = line end
  f:close()
  return out
end

--- The log lines that start with `prefix` ("conn 10.0.0.1", "req 127.0.0.1 GET /a").
function Proc:count(prefix)
  local n = 0
  for _, line in ipairs(self:lines()) do
    if line:sub(1, #prefix) == prefix then n = n + 1 end
  end
  return n
end

function Proc:stop()
  if self.pid then os.execute("kill " .. self.pid .. " 2>/dev/null") end
  self.pid = nil
  if self.pipe then self.pipe:close() end
  self.pipe = nil
  os.remove(self.log)
end

--- Starts a receiver on `addresses` (one free port for all of them).
-- opts: lifetime (seconds, default 60), lua (default lua5.4).
function M.start(addresses, opts)
  opts = opts or {}
  local log = os.tmpname()
  local args = { shell_quote(log), "0", tostring(opts.lifetime or 60) }
  for _, a in ipairs(addresses) do args[#args + 1] = shell_quote(a) end
  -- no sanitizer preload and no module paths meant for the interpreter under test
  local inner = ("echo $$; exec env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 %s %s %s")
    :format(opts.lua or "lua5.4", shell_quote(script_path()), table.concat(args, " "))
  local pipe = assert(io.popen("sh -c " .. shell_quote(inner) .. " 2>&1", "r"))
  local pid = pipe:read("*l")
  local line = pipe:read("*l")
  local port = line and line:match("^listening (%d+)")
  if not port then
    os.execute("kill " .. tostring(tonumber(pid)) .. " 2>/dev/null")
    pipe:close()
    os.remove(log)
    error("the counting receiver did not start: " .. tostring(line), 2)
  end
  return setmetatable({ pid = tonumber(pid), port = tonumber(port), pipe = pipe, log = log }, Proc)
end

if ... ~= "countrecv" and arg and arg[0] and arg[0]:find("countrecv%.lua$") then
  M.main(arg)
end

return M
