--- A throwaway nginx with ngx_http_lua and postback's LuaJIT build on its
-- paths, for specs that run code inside nginx. POST /run with a Lua chunk
-- as the body runs it in a content handler and answers its return values
-- as JSON ({ok = true, values = {...}} or {ok = false, error = "..."}).
--
--   local ngxlua = require "ngxlua"
--   local n = ngxlua.start{ http = "...", init_worker = "...", locations = "..." }
--   local r = n:run("return require('postback').fire(...)")
--   n:stop()
local cjson = require("cjson.safe").new()
local fixtures = require "fixtures"
local gatewayproc = require "gatewayproc"
local mockproc = require "mockproc"
local nginxproc = require "nginxproc"
local socket = require "socket"
local testenv = require "testenv"

local M = {}
local N = {}
N.__index = N

M.MODULES = gatewayproc.MODULES

--- The main-level lines that load ngx_http_lua (and the NDK it needs).
M.LOAD_MODULES = ("load_module %s/ndk_http_module.so;\nload_module %s/ngx_http_lua_module.so;\n"):format(
  M.MODULES, M.MODULES)

-- What a spec may need besides nginx with ngx_http_lua, and how to tell.
local NEEDS = {
  ["lua-nginx-dns"] = function() return fixtures.readfile("/usr/share/lua/5.1/nginx/dns/resolver.lua") ~= nil end,
  openssl = function() return fixtures.run("command -v openssl >/dev/null 2>&1") end,
}

-- "a", "a or b", "a, b or c"
local function words(list, last)
  if #list == 1 then return list[1] end
  return table.concat(list, ", ", 1, #list - 1) .. " " .. last .. " " .. list[#list]
end

--- Whether a spec of nginx with ngx_http_lua runs here: nil when it does,
-- else the title and the reason of a pending test that says why not.
-- opts: suites (the suites it runs in, default {"lua5.4"}: once per run is
-- enough), needs (more it needs: "lua-nginx-dns", "openssl").
--
--   local title, why = ngxlua.skip_reason { suites = { "lua5.4" } }
--   if title then it(title, function() pending(why) end) return end
function M.skip_reason(opts)
  opts = opts or {}
  local needs = opts.needs or {}
  local have = gatewayproc.available()
  for _, name in ipairs(needs) do have = have and assert(NEEDS[name], name)() end
  if not have then
    local title, missing = { "nginx with ngx_http_lua" }, { "nginx", "its lua module" }
    for _, name in ipairs(needs) do
      title[#title + 1] = name
      missing[#missing + 1] = name
    end
    return "needs " .. words(title, "and"), words(missing, "or") .. " is not installed"
  end
  local suites = opts.suites or { "lua5.4" }
  for _, s in ipairs(suites) do
    if s == testenv.suite then return nil end
  end
  return ("runs in the %s suite%s"):format(words(suites, "and"), #suites > 1 and "s" or ""), "once per run is enough"
end

local built

--- Builds postback for LuaJIT (build/luajit: what nginx loads), once.
function M.build_luajit()
  if built then return end
  assert(fixtures.run("make -s LUA=luajit >/dev/null"), "cannot build postback for LuaJIT")
  built = true
end

--- opts: http (http-level text), init_worker (Lua), locations (server
-- body), workers, env (names to pass through), worker_connections.
function M.start(opts)
  opts = opts or {}
  local root = mockproc.root()
  local build = root .. "/build/luajit"
  local main = M.LOAD_MODULES
  for _, name in ipairs(opts.env or {}) do main = main .. "env " .. name .. ";\n" end
  local http = ([[
  lua_package_path "%s/?.lua;%s/?/init.lua;%s/spec/support/?.lua;;";
  lua_package_cpath "%s/?.so;;";
  %s
  %s
]]):format(build, build, root, build,
    opts.init_worker and ("init_worker_by_lua_block {\n" .. opts.init_worker .. "\n}") or "", opts.http or "")
  local locations = [[
    location = /run {
      client_body_buffer_size 1m;
      client_max_body_size 1m;
      content_by_lua_block {
        local cjson = require "cjson.safe"
        ngx.req.read_body()
        local chunk, err = loadstring(ngx.req.get_body_data() or "", "=run")
        local res
        if not chunk then
          res = { ok = false, error = err }
        else
          local out = { pcall(chunk) }
          if out[1] then
            local values = {}
            for i = 2, table.maxn(out) do
              local v = out[i]
              if type(v) == "table" and getmetatable(v) and getmetatable(v).__tostring then
                local t = {}
                for k, x in pairs(v) do if type(x) ~= "function" and type(x) ~= "userdata" then t[k] = x end end
                t.text = tostring(v)
                v = t
              elseif type(v) == "userdata" or type(v) == "function" then
                v = tostring(v)
              end
              values[i - 1] = v == nil and cjson.null or v
            end
            res = { ok = true, values = values, n = table.maxn(out) - 1 }
          else
            res = { ok = false, error = tostring(out[2]) }
          end
        end
        ngx.header["Content-Type"] = "application/json"
        ngx.say(cjson.encode(res))
      }
    }
]] .. (opts.locations or "")
  local n = nginxproc.start { main = main, http = http, locations = locations, workers = opts.workers }
  if opts.worker_connections then
    -- nginxproc writes 4096: rewrite it and reload
    local path = n.prefix .. "/nginx.conf"
    local f = assert(io.open(path))
    local conf = f:read("*a"):gsub("worker_connections %d+;", "worker_connections " .. opts.worker_connections .. ";")
    f:close()
    f = assert(io.open(path, "w"))
    f:write(conf)
    f:close()
    os.execute(("%s -p %s -c %s -s reload 2>/dev/null"):format(n.bin, n.prefix, path))
    socket.sleep(0.5)
  end
  return setmetatable({ n = n, port = n.port, url = n.url, prefix = n.prefix }, N)
end

--- One request on a fresh connection (Connection: close): status, body
-- (chunks joined), and the head of the answer (status line and headers).
-- body, when given, goes with its Content-Length, and content_type.
local function http(port, method, path, body, timeout, content_type)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(timeout or 60)
  local head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"):format(method, path)
  if body then
    if content_type then head = head .. "Content-Type: " .. content_type .. "\r\n" end
    head = head .. "Content-Length: " .. #body .. "\r\n"
  end
  assert(c:send(head .. "\r\n" .. (body or "")))
  local all = c:receive("*a") or ""
  c:close()
  local status = tonumber(all:match("^HTTP/1%.%d (%d+)"))
  local answer_head = all:match("^(.-)\r\n\r\n") or ""
  local text = all:match("\r\n\r\n(.*)$") or ""
  if all:lower():find("transfer%-encoding: chunked") then
    local out, pos = {}, 1
    while true do
      local size, after = text:match("^(%x+)\r\n()", pos)
      if not size or tonumber(size, 16) == 0 then break end
      size = tonumber(size, 16)
      out[#out + 1] = text:sub(after, after + size - 1)
      pos = after + size + 2
    end
    text = table.concat(out)
  end
  return status, text, answer_head
end
M.http = http

--- Runs a Lua chunk inside nginx: its return values (JSON-decoded), or
-- raises with the error.
function N:run(code, timeout)
  local status, body = http(self.port, "POST", "/run", code, timeout)
  local res = cjson.decode(body)
  if status ~= 200 or type(res) ~= "table" then
    error(("nginx answered %s: %s\n%s"):format(tostring(status), body, self:error_log()), 2)
  end
  if not res.ok then error("inside nginx: " .. tostring(res.error) .. "\n" .. self:error_log(), 2) end
  local v = res.values
  for i = 1, res.n do if v[i] == cjson.null then v[i] = nil end end
  return (table.unpack or unpack)(v, 1, res.n)
end

function N:get(path, timeout)
  return http(self.port, "GET", path, nil, timeout)
end

function N:error_log() return self.n:error_log() end

function N:read(name)
  local f = io.open(self.prefix .. "/" .. name)
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

function N:reload()
  os.execute(("%s -p %s -c %s/nginx.conf -s reload 2>/dev/null"):format(self.n.bin, self.prefix, self.prefix))
end

--- The master's pid (nil when nginx is not running).
function N:master()
  return tonumber(self:read("nginx.pid"):match("%d+"))
end

--- Pids of the worker processes (children of the master).
function N:workers()
  local out = {}
  local master = self:master()
  if not master then return out end
  local p = assert(io.popen("pgrep -P " .. master))
  for line in p:lines() do out[#out + 1] = tonumber(line) end
  p:close()
  return out
end

--- Stops nginx and waits (at most 15 s) until the master is gone: a
-- graceful stop (QUIT: workers end as on a reload), or with fast = true a
-- fast one (TERM, `nginx -s stop`). True once it is gone.
function N:quit(fast)
  local nx = self.n
  assert(fixtures.run(("%s -p %s -c %s/nginx.conf -s %s 2>/dev/null"):format(
    nx.bin, nx.prefix, nx.prefix, fast and "stop" or "quit")), "nginx -s quit failed")
  return fixtures.wait_for(function() return self:master() == nil end, 15)
end

--- Starts nginx again, in the same prefix with the same configuration.
function N:start_again()
  local nx = self.n
  assert(fixtures.run(("%s -p %s -c %s/nginx.conf 2>/dev/null"):format(nx.bin, nx.prefix, nx.prefix)),
    "nginx did not start again")
end

function N:stop() self.n:stop() end

return M
