--- Starts a throwaway nginx on a free loopback port (for throughput tests,
-- benchmarks and the OpenResty gateway tests), in a temporary prefix.
--
--   local ngx = require "nginxproc"
--   local n = ngx.start{ locations = "location / { return 204; }" }
--   n.url --> "http://127.0.0.1:PORT"
--   n:stop()
local fixtures = require "fixtures"
local socket = require "socket"

local M = {}
local Nginx = {}
Nginx.__index = Nginx

--- A free loopback port (bound, then released: a small race, fine for tests).
function M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function nginx_bin()
  for _, p in ipairs { "/usr/sbin/nginx", "/usr/local/sbin/nginx" } do
    local f = io.open(p, "r")
    if f then f:close() return p end
  end
  return "nginx"
end

--- opts: locations (server block body), http (extra http-level text),
-- main (extra main-level text, e.g. load_module), workers (default 1).
function M.start(opts)
  opts = opts or {}
  local prefix = fixtures.tmpdir()
  assert(os.execute("mkdir -p " .. prefix .. "/logs " .. prefix .. "/tmp"))
  local port = opts.port or M.free_port()
  local conf = ([[
%s
worker_processes %d;
daemon on;
pid %s/nginx.pid;
error_log %s/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  client_body_temp_path %s/tmp;
  proxy_temp_path %s/tmp;
  fastcgi_temp_path %s/tmp;
  uwsgi_temp_path %s/tmp;
  scgi_temp_path %s/tmp;
  %s
  server {
    listen 127.0.0.1:%d;
    %s
  }
}
]]):format(opts.main or "", opts.workers or 1, prefix, prefix, prefix, prefix, prefix, prefix, prefix,
    opts.http or "", port, opts.locations or "location / { return 204; }")
  local f = assert(io.open(prefix .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  local ok = os.execute(("%s -p %s -c %s/nginx.conf 2>%s/logs/start.log"):format(nginx_bin(), prefix, prefix, prefix))
  if not (ok == true or ok == 0) then
    local log = io.open(prefix .. "/logs/start.log")
    error("nginx did not start: " .. (log and log:read("*a") or "?"), 2)
  end
  -- Wait until it accepts connections.
  for _ = 1, 100 do
    local c = socket.connect("127.0.0.1", port)
    if c then c:close() break end
    socket.sleep(0.02)
  end
  return setmetatable({ prefix = prefix, port = port, url = "http://127.0.0.1:" .. port, bin = nginx_bin() }, Nginx)
end

--- The error log's text (to explain failures).
function Nginx:error_log()
  return fixtures.readfile(self.prefix .. "/logs/error.log") or ""
end

function Nginx:stop()
  if not self.prefix then return end
  os.execute(("%s -p %s -c %s/nginx.conf -s stop 2>/dev/null; sleep 0.1; rm -rf %s"):format(
    self.bin, self.prefix, self.prefix, self.prefix))
  self.prefix = nil
end
Nginx.__gc = Nginx.stop

return M
