--- Lays out examples/openresty as the README says (a prefix with modules/,
-- lib/ and app/, and spool/ for the workers) and runs it in nginx on a free
-- loopback port. Used by the OpenResty specs and bench/gateway.lua.
--
--   local gw = require("gatewayproc").start{ env = { OFFERSLOOK_BASE_URL = mock.url } }
--   gw.port, gw.prefix; gw:reload(); gw:error_log(); gw:stop()
local mockproc = require "mockproc"
local nginxproc = require "nginxproc"
local socket = require "socket"

local M = {}
local Gateway = {}
Gateway.__index = Gateway

M.MODULES = "/usr/lib/nginx/modules"

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local quote = require("fixtures").sh

--- true when nginx and its Lua module are installed.
function M.available()
  return exists("/usr/sbin/nginx") and exists(M.MODULES .. "/ngx_http_lua_module.so")
    and exists(M.MODULES .. "/ndk_http_module.so")
end

--- Starts the gateway. opts: env (variables for nginx), edit (function
-- conf -> conf, after the port is set), app_edit (function source ->
-- source: app/ is then a copy of the example with gateway.lua edited),
-- spool_owner (user the spool directory is given to when running as root,
-- default "nobody"), port.
function M.start(opts)
  opts = opts or {}
  local root = mockproc.root()
  local prefix = require("fixtures").tmpdir()
  assert(sh(("mkdir -p %s/logs %s/tmp %s/spool && ln -s %s %s/modules && ln -s %s/build/luajit %s/lib")
    :format(prefix, prefix, prefix, M.MODULES, prefix, root, prefix)))
  if opts.app_edit then
    assert(sh(("cp -r %s/examples/openresty %s/app"):format(root, prefix)))
    local f = assert(io.open(prefix .. "/app/gateway.lua"))
    local src = opts.app_edit(f:read("*a"))
    f:close()
    f = assert(io.open(prefix .. "/app/gateway.lua", "w"))
    f:write(src)
    f:close()
  else
    assert(sh(("ln -s %s/examples/openresty %s/app"):format(root, prefix)))
  end
  -- the workers write the spool: as root, nginx runs them as nobody
  sh(("chown %s %s/spool 2>/dev/null"):format(opts.spool_owner or "nobody", prefix))
  local port = opts.port or nginxproc.free_port()
  local f = assert(io.open(root .. "/examples/openresty/nginx.conf"))
  local conf = f:read("*a"):gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
  f:close()
  if opts.edit then conf = opts.edit(conf) end
  f = assert(io.open(prefix .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  local env = {}
  for k, v in pairs(opts.env or {}) do env[#env + 1] = k .. "=" .. quote(v) end
  table.sort(env)
  local self = setmetatable({ prefix = prefix, port = port, url = "http://127.0.0.1:" .. port, env = env }, Gateway)
  if not sh(("env -u LD_PRELOAD %s /usr/sbin/nginx -p %s -c nginx.conf 2>%s/logs/start.log")
      :format(table.concat(env, " "), prefix, prefix)) then
    local log = self:read("logs/start.log")
    sh("rm -rf " .. prefix)
    error("nginx did not start: " .. log, 2)
  end
  for _ = 1, 100 do
    local c = socket.connect("127.0.0.1", port)
    if c then c:close() break end
    socket.sleep(0.02)
  end
  return self
end

--- A file of the prefix, as text ("" when missing).
function Gateway:read(name)
  return require("fixtures").readfile(self.prefix .. "/" .. name) or ""
end

function Gateway:error_log() return self:read("logs/error.log") end

--- The master's pid.
function Gateway:pid()
  return tonumber(self:read("logs/nginx.pid"):match("%d+"))
end

--- Pids of the worker processes (children of the master).
function Gateway:workers()
  local p = io.popen("pgrep -P " .. tostring(self:pid()))
  local out = {}
  for line in p:lines() do out[#out + 1] = tonumber(line) end
  p:close()
  return out
end

--- Reloads (HUP) and waits until the old workers are gone (at most wait s).
function Gateway:reload(wait)
  local old = self:workers()
  sh("kill -HUP " .. self:pid())
  local deadline = socket.gettime() + (wait or 10)
  while socket.gettime() < deadline do
    local alive = false
    for _, pid in ipairs(old) do
      if sh(("kill -0 %d 2>/dev/null"):format(pid)) then alive = true end
    end
    if not alive then return true end
    socket.sleep(0.05)
  end
  return false
end

function Gateway:stop()
  if not self.prefix then return end
  sh(("/usr/sbin/nginx -p %s -c nginx.conf -s stop 2>/dev/null"):format(self.prefix))
  local pidfile = self.prefix .. "/logs/nginx.pid"
  for _ = 1, 100 do
    if not exists(pidfile) then break end
    socket.sleep(0.05)
  end
  sh("rm -rf " .. self.prefix)
  self.prefix = nil
end

return M
