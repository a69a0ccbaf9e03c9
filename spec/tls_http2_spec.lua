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
