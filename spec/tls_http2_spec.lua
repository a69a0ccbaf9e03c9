-- TLS and HTTP/2 against a real nginx on loopback with a certificate made
-- for the test: verification on by default, ca_file trusted, insecure as the
-- explicit way out, and fire_many multiplexing many postbacks over few
-- HTTP/2 connections.
local postback = require "postback"
local nginxproc = require "nginxproc"
local testenv = require "testenv"
local F = require "fixtures"

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local have = sh("command -v openssl >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx")

describe("TLS and HTTP/2", function()
  if not have then
    it("needs openssl and nginx", function() pending("openssl or nginx is not installed") end)
    return
  end

  local ngx, dir, cert

  setup(function()
    dir = F.tmpdir()
    cert = dir .. "/cert.pem"
    assert(sh(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s -days 2 "
      .. "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost >/dev/null 2>&1"):format(dir, cert)),
      "openssl could not make a certificate")
    ngx = nginxproc.start {
      http = ("log_format pb '$server_protocol $connection $request_uri';"),
      locations = ("listen 127.0.0.1:%d ssl http2; ssl_certificate %s; ssl_certificate_key %s/key.pem;"
        .. " access_log %s/access.log pb; location / { return 204; }"):format(nginxproc.free_port(), cert, dir, dir),
    }
  end)

  teardown(function()
    if ngx then ngx:stop() end
    if dir then sh("rm -rf " .. dir) end
  end)

  -- the TLS port is the second listen line of the server block
  local function tls_base()
    local f = assert(io.open(ngx.prefix .. "/nginx.conf"))
    local conf = f:read("*a")
    f:close()
    return "https://127.0.0.1:" .. conf:match("listen 127%.0%.0%.1:(%d+) ssl")
  end

  local function log_lines()
    local f = io.open(dir .. "/access.log")
    if not f then return {} end
    local out = {}
    for line in f:lines() do out[#out + 1] = line end
    f:close()
    return out
  end

  it("refuses a certificate it cannot verify, accepts it with ca_file or insecure", function()
    local base = tls_base()
    local r, err = postback.fire(base .. "/pb?c={click_id}", { click_id = "v" }, { allow_private = true, retries = 0 })
    assert.is_nil(r)
    assert.equal("transport", err.kind)
    assert.equal("tls", err.reason)
    assert(postback.fire(base .. "/pb?c={click_id}", { click_id = "ca" }, { allow_private = true, ca_file = cert, ok_status = 204 }))
    assert(postback.fire(base .. "/pb?c={click_id}", { click_id = "insecure" }, { allow_private = true, insecure = true, ok_status = 204 }))
  end)

  it("multiplexes fire_many over HTTP/2", function()
    local base = tls_base()
    local n = testenv.slow and 50 or 400
    local items = {}
    for i = 1, n do items[i] = { url = base .. "/h2?c={click_id}", values = { click_id = i } } end
    local results = postback.fire_many(items, { allow_private = true, concurrency = 32, ca_file = cert, ok_status = 204 })
    local ok = 0
    for _, r in ipairs(results) do if r.ok then ok = ok + 1 end end
    assert.equal(n, ok)
    local conns, h2 = {}, 0
    for _, line in ipairs(log_lines()) do
      local proto, conn, uri = line:match("^(%S+) (%d+) (%S+)")
      if uri and uri:find("^/h2") then
        if proto == "HTTP/2.0" then h2 = h2 + 1 end
        conns[conn] = true
      end
    end
    local nconns = 0
    for _ in pairs(conns) do nconns = nconns + 1 end
    assert.equal(n, h2)
    -- many streams on few connections (one, once the first is known to be h2)
    assert.is_true(nconns <= 4, ("%d connections for %d postbacks"):format(nconns, n))
  end)

  -- A receiver that completes the TLS handshake and then never answers
  -- (openssl s_server with nothing to send): each postback to it ends in a
  -- timeout at its own deadline, and the healthy receiver's postbacks fired
  -- beside them are all delivered, through fire_many and the dispatcher.
  it("ends postbacks to an HTTPS receiver that never answers at their timeout; the others are delivered", function()
    local socket = require "socket"
    local port = nginxproc.free_port()
    local pidfile = dir .. "/stuck.pid"
    assert(sh(("setsid sh -c 'echo $$ > %s; sleep 60 | exec openssl s_server -quiet -accept 127.0.0.1:%d "
      .. "-cert %s -key %s/key.pem' >/dev/null 2>&1 &"):format(pidfile, port, cert, dir)))
    finally(function()
      local pid = (F.readfile(pidfile) or ""):match("%d+")
      if pid then os.execute("kill -9 -" .. pid .. " 2>/dev/null") end -- its process group
    end)
    assert(F.wait_for(function()
      local c = socket.tcp()
      c:settimeout(0.2)
      local ok = c:connect("127.0.0.1", port)
      c:close()
      return ok
    end, 10), "openssl s_server did not start")
    local stuck, base = ("https://127.0.0.1:%d"):format(port), tls_base()
    -- (a TLS handshake alone takes about a second under valgrind)
    local timeout = testenv.slow and 6 or 1
    local o = { allow_private = true, ca_file = cert, ok_status = 204, retries = 0, timeout = timeout, concurrency = 8 }
    local items = {}
    for i = 1, 10 do items[#items + 1] = base .. "/alive" .. i end
    table.insert(items, 3, stuck .. "/stuck-a")
    table.insert(items, 8, stuck .. "/stuck-b")
    local t0 = socket.gettime()
    local results = postback.fire_many(items, o)
    local took = socket.gettime() - t0
    for i, url in ipairs(items) do
      local r = results[i]
      if url:find("stuck", 1, true) then
        assert.is_false(r.ok, url)
        assert.equal("timeout", r.error.kind, url .. ": " .. tostring(r.error))
      else
        assert.is_true(r.ok, url .. ": " .. tostring(r.error))
      end
    end
    if not testenv.slow then
      assert.is_true(took < 8, ("fire_many took %.1f s with a 1 s timeout"):format(took))
    end
    local got = {}
    o.on_result = function(r) got[#got + 1] = r end
    local d = postback.dispatcher(o)
    for _, url in ipairs(items) do assert(d:fire(url)) end
    assert.is_true(d:wait(10 * timeout), "the dispatcher did not finish")
    d:close()
    assert.equal(#items, #got)
    local delivered, timed_out = 0, 0
    for _, r in ipairs(got) do
      if r.ok then delivered = delivered + 1
      elseif r.error and r.error.kind == "timeout" then timed_out = timed_out + 1 end
    end
    assert.same({ 10, 2 }, { delivered, timed_out })
  end)

  it("speaks TLS to the API with a trusted ca_file", function()
    local base = tls_base()
    local c = assert(postback.client { network = "n", api_key = "k", base_url = base, ca_file = cert, retries = 0 })
    local pb, err = c:get(1)
    -- nginx answers 204 with no body: reached over verified TLS, then a decode error
    assert.is_nil(pb)
    assert.equal("decode", err.kind)
    assert.equal(204, err.status)
    c:close()
  end)
end)
