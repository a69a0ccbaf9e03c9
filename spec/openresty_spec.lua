-- The OpenResty example in a real nginx (Debian's nginx + ngx_http_lua on
-- LuaJIT), against the mock Offerslook: admin CRUD through the client on
-- cosockets, conversions fired in the background, and a worker that keeps
-- answering while a slow receiver holds postbacks in flight.
local mockproc = require "mockproc"
local socket = require "socket"

local function exists(path)
  local f = io.open(path, "r")
  if f then f:close() return true end
  return false
end

local MODULES = "/usr/lib/nginx/modules"
local have_nginx = exists("/usr/sbin/nginx") and exists(MODULES .. "/ngx_http_lua_module.so")
  and exists(MODULES .. "/ndk_http_module.so")
local suite = require("testenv").suite

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local function request(port, method, path, body)
  local c = assert(socket.connect("127.0.0.1", port))
  c:settimeout(10)
  local head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"):format(method, path)
  if body then head = head .. "Content-Type: application/json\r\nContent-Length: " .. #body .. "\r\n" end
  assert(c:send(head .. "\r\n" .. (body or "")))
  local all = c:receive("*a")
  c:close()
  local status = tonumber(all:match("^HTTP/1%.%d (%d+)"))
  local text = all:match("\r\n\r\n(.*)$") or ""
  -- chunked answers from content_by_lua: join the chunks
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
  return status, text
end

describe("OpenResty gateway example", function()
  if not have_nginx then
    it("needs nginx with ngx_http_lua", function() pending("nginx or its lua module is not installed") end)
    return
  end
  if suite ~= "lua5.4" and suite ~= "luajit" then
    it("runs in the lua5.4 and luajit suites", function() pending("once per run is enough") end)
    return
  end

  local mock, prefix, port
  local cjson = require("cjson.safe")

  setup(function()
    assert(sh("make -s LUA=luajit >/dev/null"), "cannot build postback for LuaJIT")
    mock = mockproc.start { network = "gw", api_key = "gw-key" }
    prefix = os.tmpname()
    os.remove(prefix)
    assert(sh(("mkdir -p %s/logs %s/tmp && ln -s %s %s/modules && ln -s %s/build/luajit %s/lib && ln -s %s/examples/openresty %s/app")
      :format(prefix, prefix, MODULES, prefix, mockproc.root(), prefix, mockproc.root(), prefix)))
    port = require("nginxproc").free_port()
    local f = assert(io.open("examples/openresty/nginx.conf"))
    local conf = f:read("*a"):gsub("listen 127%.0%.0%.1:8080;", "listen 127.0.0.1:" .. port .. ";")
    f:close()
    f = assert(io.open(prefix .. "/nginx.conf", "w"))
    f:write(conf)
    f:close()
    assert(sh(("env -u LD_PRELOAD OFFERSLOOK_NETWORK=gw OFFERSLOOK_API_KEY=gw-key OFFERSLOOK_BASE_URL=%s /usr/sbin/nginx -p %s -c nginx.conf 2>%s/logs/start.log")
      :format(mock.url, prefix, prefix)), "nginx did not start")
    for _ = 1, 100 do
      local c = socket.connect("127.0.0.1", port)
      if c then c:close() break end
      socket.sleep(0.02)
    end
  end)

  teardown(function()
    if prefix then
      sh(("/usr/sbin/nginx -p %s -c nginx.conf -s stop 2>/dev/null; sleep 0.2; rm -rf %s"):format(prefix, prefix))
    end
    if mock then mock:stop() end
  end)

  local function error_log()
    local f = io.open(prefix .. "/logs/error.log")
    local s = f and f:read("*a") or ""
    if f then f:close() end
    return s
  end

  before_each(function() mock:reset() end)

  -- What the receiver got, once it holds n postbacks (or after 5 s).
  local function received_at_least(n)
    local got
    for _ = 1, 100 do
      got = mock:received()
      if #got >= n then break end
      socket.sleep(0.05)
    end
    return got
  end

  it("proxies postback CRUD to Offerslook", function()
    local code = mock.url .. "/postback?click_id={click_id}&payout={payout}"
    local status, body = request(port, "POST", "/admin/postbacks",
      cjson.encode { offer_id = 1, affiliate_id = 9, type = 2, code = code })
    assert.equal(201, status, body .. error_log())
    local pb = cjson.decode(body).data
    assert.equal(9, pb.affiliate_id)
    pb.id = ("%d"):format(pb.id) -- cjson gives 1.0 under Lua 5.4
    status, body = request(port, "GET", "/admin/postbacks/" .. pb.id)
    assert.equal(200, status)
    assert.equal(tonumber(pb.id), cjson.decode(body).data.id)
    status = request(port, "PATCH", "/admin/postbacks/" .. pb.id .. "?status=rejected")
    assert.equal(200, status)
    status, body = request(port, "PUT", "/admin/postbacks/" .. pb.id, cjson.encode { code = code .. "&v=2" })
    assert.equal(200, status, body)
    status, body = request(port, "GET", "/admin/postbacks")
    assert.equal(200, status)
    assert.equal(1, cjson.decode(body).data.totalRows)
    -- the protocol rule holds in the gateway too, before any request
    status, body = request(port, "POST", "/admin/postbacks",
      cjson.encode { offer_id = 2, affiliate_id = 9, type = 3, code = "<img src=\"x\">" })
    assert.equal(400, status)
    assert.equal("validation", cjson.decode(body).error.kind)
    status = request(port, "DELETE", "/admin/postbacks/" .. pb.id)
    assert.equal(200, status)
    status = request(port, "GET", "/admin/postbacks/" .. pb.id)
    assert.equal(404, status)
    -- what reached the mock API: authenticated calls
    for _, r in ipairs(mock:requests()) do assert.is_true(r.auth_ok) end
  end)

  it("fires the offer's postbacks for a conversion, in the background", function()
    local code = mock.url .. "/postback?click_id={click_id}&payout={payout}&aff={aff_id}"
    for aff = 1, 3 do
      local status = request(port, "POST", "/admin/postbacks",
        cjson.encode { offer_id = 3, affiliate_id = aff, type = 2, code = code })
      assert.equal(201, status)
    end
    local status, body = request(port, "GET", "/conversion?click_id=c-77&payout=1.5&offer_id=3")
    assert.equal(202, status, body .. error_log())
    assert.equal(3, cjson.decode(body).queued)
    local got = received_at_least(3)
    assert.equal(3, #got, error_log())
    local affs = {}
    for _, g in ipairs(got) do
      assert.matches("click_id=c%-77&payout=1.5", g.query)
      affs[g.query:match("aff=(%d+)")] = true
    end
    assert.same({ ["1"] = true, ["2"] = true, ["3"] = true }, affs)
  end)

  it("keeps answering while a slow receiver holds postbacks in flight", function()
    local slow = mock.url .. "/postback?click_id={click_id}&mock_fault=slow&mock_delay=2"
    for aff = 1, 4 do
      assert.equal(201, (request(port, "POST", "/admin/postbacks",
        cjson.encode { offer_id = 1, affiliate_id = aff, type = 1, code = slow }))) -- allow unknown params
    end
    local t0 = socket.gettime()
    assert.equal(202, (request(port, "GET", "/conversion?click_id=slow-1&offer_id=1")))
    -- the worker answers other requests at once
    local worst = 0
    for _ = 1, 20 do
      local t = socket.gettime()
      local status = request(port, "GET", "/health")
      assert.equal(200, status)
      worst = math.max(worst, socket.gettime() - t)
    end
    assert.is_true(socket.gettime() - t0 < 1.5, "the health checks waited for the receiver")
    assert.is_true(worst < 0.5, ("a health check took %.0f ms"):format(worst * 1000))
    assert.equal(4, #received_at_least(4), error_log())
  end)
end)
