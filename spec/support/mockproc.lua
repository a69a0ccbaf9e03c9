--- Starts the mock Offerslook (mock/offerslook.lua) as a real process on a free
-- loopback port, and talks to its control API. Used by specs, the demo and
-- benchmarks.
--
--   local mock = require "mockproc"
--   local m = mock.start{ network = "demo", api_key = "k", latency = 0 }
--   m.url  --> "http://127.0.0.1:PORT"
--   m:control("POST", "/_mock/faults", { fault = "status", status = 503 })
--   m:stop()
local socket = require "socket"
local cjson = require("cjson.safe").new()

local M = {}
local Mock = {}
Mock.__index = Mock

local shell_quote = require("fixtures").sh

--- Absolute directory of the repository.
M.root = require("fixtures").root

--- Starts the mock; options: network, api_key, latency (ms), state, lua, args.
function M.start(opts)
  opts = opts or {}
  local lua = opts.lua or os.getenv("POSTBACK_MOCK_LUA") or "lua5.4"
  local args = {
    "--port", "0",
    "--network", opts.network or "demo",
    "--api-key", opts.api_key or "demo-key",
    "--quiet",
  }
  if opts.latency then args[#args + 1] = "--latency"; args[#args + 1] = tostring(opts.latency) end
  if opts.state then args[#args + 1] = "--state"; args[#args + 1] = opts.state end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shell_quote(a) end
  -- The mock runs on its own: no sanitizer preload and no module paths meant
  -- for the interpreter under test.
  local inner = ("echo $$; exec env -u LD_PRELOAD -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 %s %s %s"):format(
    lua, shell_quote(M.root() .. "/mock/offerslook.lua"), table.concat(quoted, " "))
  -- stderr goes to a log (a pipe nobody reads could fill up and stall it).
  local log = os.getenv("POSTBACK_MOCK_LOG") or "/dev/null"
  local cmd = "sh -c " .. shell_quote(inner) .. " 2>>" .. shell_quote(log)
  local pipe = assert(io.popen(cmd, "r"))
  local pid = pipe:read("*l")
  local line = pipe:read("*l")
  local port = line and line:match("listening on http://127%.0%.0%.1:(%d+)")
  if not port then
    pipe:close()
    error("mock did not start: " .. tostring(line), 2)
  end
  local self = setmetatable({ pid = tonumber(pid), port = tonumber(port), pipe = pipe }, Mock)
  self.url = "http://127.0.0.1:" .. port
  self.network = opts.network or "demo"
  self.api_key = opts.api_key or "demo-key"
  return self
end

--- One HTTP request over a fresh loopback connection: status, body.
function M.http(port, method, path, body, headers)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(30)
  local lines = { ("%s %s HTTP/1.1"):format(method, path), "Host: 127.0.0.1", "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then
    lines[#lines + 1] = "Content-Type: application/json"
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  assert(c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")))
  local status_line = assert(c:receive("*l"))
  local status = tonumber(status_line:match("^HTTP/%d%.%d (%d+)"))
  local len
  while true do
    local h = assert(c:receive("*l"))
    if h == "" then break end
    local n = h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
    if n then len = tonumber(n) end
  end
  local data = len and c:receive(len) or c:receive("*a")
  c:close()
  return status, data
end

--- Calls the control API: decoded JSON (or raw text), status.
function Mock:control(method, path, value)
  local body = value ~= nil and assert(cjson.encode(value)) or nil
  local status, text = M.http(self.port, method, path, body)
  local doc = cjson.decode(text or "")
  if doc == nil then return text, status end
  return doc, status
end

function Mock:reset() return self:control("POST", "/_mock/reset", {}) end
function Mock:received() return self:control("GET", "/_mock/received") end
function Mock:requests() return self:control("GET", "/_mock/requests") end
function Mock:stats() return self:control("GET", "/_mock/stats") end
function Mock:fault(f) return self:control("POST", "/_mock/faults", f) end
function Mock:seed(s) return self:control("POST", "/_mock/seed", s) end

--- Writes per postback id at the mock (creates, updates, status changes,
-- deletes): {id = n}, their total, and the most of any one id.
function Mock:writes()
  local by_id, total, max = {}, 0, 0
  for k, n in pairs(self:stats().writes) do
    n = math.floor(n + 0.5) -- (Debian's lua-cjson gives floats under 5.4)
    by_id[tonumber(k)] = n
    total = total + n
    if n > max then max = n end
  end
  return by_id, total, max
end

--- A client option table for this mock.
function Mock:client_opts(extra)
  local o = { network = self.network, api_key = self.api_key, base_url = self.url,
              backoff_base = 0.01, backoff_max = 0.05 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

--- Stops the mock (shutdown request, then SIGKILL if it lingers).
function Mock:stop()
  if not self.pid then return end
  pcall(M.http, self.port, "POST", "/_mock/shutdown", "{}")
  os.execute(("for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 %d 2>/dev/null || exit 0; sleep 0.1; done; "
    .. "kill -9 %d 2>/dev/null"):format(self.pid, self.pid))
  if self.pipe then pcall(self.pipe.close, self.pipe) end
  self.pid = nil
end
Mock.__gc = Mock.stop

return M
