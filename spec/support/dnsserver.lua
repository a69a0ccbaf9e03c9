-- A tiny DNS server for the specs: answers A queries from a fixed table,
-- NXDOMAIN for other names, an empty answer for other types. Loopback only.
--
--   lua5.4 spec/support/dnsserver.lua [--port 0] [--rotate] name=1.2.3.4 [name=5.6.7.8 ...]
--
-- Prints "dns listening on 127.0.0.1:PORT" once it listens. A name given
-- twice gets both addresses; with --rotate each A query gets one of them,
-- the next each time (a name that rebinds between lookups). Control: a
-- query for "_shutdown." stops it.
--
-- From a spec (the server runs as a child process):
--   local dns = require("dnsserver").start{ ["pb.test"] = "127.0.0.1" }
--   dns.port; dns:stop()
--   dnsserver.start(names, { port = 53, rotate = true })
local socket = require "socket"

local M = {}

local function u16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end
local function be16(n) return string.char(math.floor(n / 256) % 256, n % 256) end

-- The question's name (lower case) and the offset after it.
local function qname(msg, i)
  local labels = {}
  while true do
    local len = msg:byte(i)
    if not len then return nil end
    if len == 0 then return table.concat(labels, "."):lower(), i + 1 end
    labels[#labels + 1] = msg:sub(i + 1, i + len)
    i = i + 1 + len
  end
end

local function answer(names, msg, rotate)
  if #msg < 12 then return nil end
  local id, qd = msg:sub(1, 2), u16(msg, 5)
  if qd ~= 1 then return nil end
  local name, after = qname(msg, 13)
  if not name or #msg < after + 3 then return nil end
  local qtype = u16(msg, after)
  local question = msg:sub(13, after + 3)
  local addrs = names[name]
  local rcode = addrs and 0 or 3
  if addrs and qtype == 1 and rotate then
    rotate[name] = (rotate[name] or 0) % #addrs + 1
    addrs = { addrs[rotate[name]] }
  end
  local records = {}
  if addrs and qtype == 1 then
    for _, ip in ipairs(addrs) do
      local a, b, c, d = ip:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
      records[#records + 1] = "\192\12" .. be16(1) .. be16(1) .. "\0\0\0\30" .. be16(4)
        .. string.char(tonumber(a), tonumber(b), tonumber(c), tonumber(d))
    end
  end
  -- flags: response, recursion desired and available, rcode
  local flags = be16(0x8180 + rcode)
  return id .. flags .. be16(1) .. be16(#records) .. be16(0) .. be16(0) .. question .. table.concat(records), name
end

function M.serve(port, names, rotate)
  local state = rotate and {} or nil -- name -> the index of its last answer
  local udp = assert(socket.udp())
  assert(udp:setsockname("127.0.0.1", port or 0))
  local _, p = udp:getsockname()
  io.write("dns listening on 127.0.0.1:", p, "\n")
  io.flush()
  while true do
    local msg, ip, from = udp:receivefrom()
    if msg then
      local reply, name = answer(names, msg, state)
      if name == "_shutdown" then break end
      if reply then udp:sendto(reply, ip, from) end
    end
  end
  udp:close()
end

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

--- Starts the server as a child process; names: {name = ip or {ip, ...}};
-- opts: port (default any free one), rotate (see above).
function M.start(names, opts)
  opts = opts or {}
  local args = { "--port", tostring(opts.port or 0) }
  if opts.rotate then args[#args + 1] = "--rotate" end
  for name, ips in pairs(names) do
    if type(ips) == "string" then ips = { ips } end
    for _, ip in ipairs(ips) do args[#args + 1] = shell_quote(name .. "=" .. ip) end
  end
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  -- lua5.4 with its own module paths, whatever interpreter started it
  local inner = ("exec env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 lua5.4 %s %s")
    :format(shell_quote(src), table.concat(args, " "))
  local pipe = assert(io.popen("sh -c " .. shell_quote(inner), "r"))
  local line = pipe:read("*l")
  local port = tonumber(line and line:match("listening on 127%.0%.0%.1:(%d+)"))
  assert(port, "the DNS server did not start: " .. tostring(line))
  return setmetatable({ port = port, pipe = pipe }, { __index = M })
end

--- Stops a server started with M.start.
function M:stop()
  if not self.pipe then return end
  local udp = socket.udp()
  -- a query for "_shutdown."
  udp:sendto("\0\1\1\0\0\1\0\0\0\0\0\0\9_shutdown\0\0\1\0\1", "127.0.0.1", self.port)
  udp:close()
  self.pipe:close()
  self.pipe = nil
end

-- Run as a script (not when required as a module).
if ... ~= "dnsserver" and arg and arg[0] and arg[0]:find("dnsserver%.lua$") then
  local port, names, rotate = 0, {}, false
  local i = 1
  while arg[i] do
    if arg[i] == "--port" then
      port = tonumber(arg[i + 1])
      i = i + 2
    elseif arg[i] == "--rotate" then
      rotate = true
      i = i + 1
    else
      local name, ip = arg[i]:match("^([^=]+)=(.+)$")
      assert(name, "name=ip expected, got " .. arg[i])
      name = name:lower()
      names[name] = names[name] or {}
      table.insert(names[name], ip)
      i = i + 1
    end
  end
  M.serve(port, names, rotate)
end

return M
