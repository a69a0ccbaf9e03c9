-- The cosocket transport inside a real nginx (Debian's nginx + ngx_http_lua):
-- one deadline for a whole request (a receiver that drips its answer is cut
-- at the timeout), the destination policy (names resolved with nginx's DNS
-- library against a DNS server of the test, every address checked before
-- connecting, Host and TLS keep the name), and TLS with verification on.
local dnsserver = require "dnsserver"
local fixtures = require "fixtures"
local hostile = require "hostile"
local nginxproc = require "nginxproc"
local ngxlua = require "ngxlua"

describe("the ngx transport inside nginx", function()
  local title, why = ngxlua.skip_reason { suites = { "lua5.4" }, needs = { "lua-nginx-dns", "openssl" } }
  if title then it(title, function() pending(why) end) return end

  local dir, recv, dns, bad, n, tls_ok, tls_untrusted

  setup(function()
    ngxlua.build_luajit()
    dir = fixtures.tmpdir()
    -- A: the certificate nginx trusts; B: the same names, not trusted
    for _, name in ipairs { "a", "b" } do
      assert(fixtures.run(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/%s.key -out %s/%s.pem -days 2 "
        .. "-subj /CN=localhost -addext subjectAltName=DNS:localhost,DNS:pb.test >/dev/null 2>&1")
        :format(dir, name, dir, name)), "openssl could not make a certificate")
    end
    tls_ok, tls_untrusted = nginxproc.free_port(), nginxproc.free_port()
    recv = nginxproc.start {
      http = ("log_format pb '$host $connection $request_uri';\n"
        .. "server { listen 127.0.0.1:%d ssl; ssl_certificate %s/b.pem; ssl_certificate_key %s/b.key;"
        .. " access_log %s/recv.log pb; location / { return 204; } }"):format(tls_untrusted, dir, dir, dir),
      locations = ("listen 127.0.0.1:%d ssl; ssl_certificate %s/a.pem; ssl_certificate_key %s/a.key;"
        .. " access_log %s/recv.log pb; location / { return 204; }"):format(tls_ok, dir, dir, dir),
    }
    dns = dnsserver.start { ["pb.test"] = "127.0.0.1", ["meta.test"] = "169.254.169.254",
                            ["mixed.test"] = { "10.0.0.1", "127.0.0.1" } }
    bad = hostile.start()
    n = ngxlua.start { http = ("lua_ssl_trusted_certificate %s/a.pem; lua_ssl_verify_depth 2;"):format(dir) }
  end)

  teardown(function()
    if n then n:stop() end
    if bad then bad:stop() end
    if dns then dns:stop() end
    if recv then recv:stop() end
    if dir then fixtures.run("rm -rf " .. dir) end
  end)

  local function log_lines()
    local out = {}
    local f = io.open(dir .. "/recv.log")
    if not f then return out end
    for line in f:lines() do out[#out + 1] = line end
    f:close()
    return out
  end

  local function received(path)
    local k = 0
    for _, line in ipairs(log_lines()) do
      if line:find(path, 1, true) then k = k + 1 end
    end
    return k
  end

  -- fire inside nginx: ok, status, err fields
  local function fire(url, opts)
    return n:run(([[
      local postback = require "postback"
      local r, err = postback.fire(%q, nil, %s)
      if r then return true, r.status end
      return false, err.kind, err.code, err.reason, err.retryable, tostring(err), err.address
    ]]):format(url, opts or "{ retries = 0 }"))
  end

  it("ends a request that drips its answer at its timeout, however slowly the bytes come", function()
    local t0 = require("socket").gettime()
    local ok, kind, _, reason, retryable, text = fire(bad.url .. "/drip/1",
      "{ retries = 0, timeout = 2, allow_private = true }")
    local took = require("socket").gettime() - t0
    assert.is_false(ok)
    assert.equal("timeout", kind, text)
    assert.equal("timeout", reason)
    assert.is_true(retryable)
    assert.is_true(took >= 1.9 and took < 3.5, ("took %.2f s"):format(took))
    -- the client's requests too (a transport object, one request)
    t0 = require("socket").gettime()
    local status, kind2 = n:run(([[
      local t = require("postback.transport.ngx").new {}
      local resp, err = t:request { method = "GET", url = %q, timeout = 1.5 }
      return resp and resp.status, err and err.kind
    ]]):format(bad.url .. "/drip/2"))
    took = require("socket").gettime() - t0
    assert.is_nil(status)
    assert.equal("timeout", kind2)
    assert.is_true(took < 3, ("took %.2f s"):format(took))
  end)

  it("ends every hostile answer in a typed error within its timeout", function()
    local socket = require "socket"
    for _, case in ipairs {
      { "/silent/1", "timeout" }, { "/chunked-forever/1", "timeout" }, { "/huge-body/1", "transport", "too_large" },
      { "/close-mid-headers/1", "transport" }, { "/invalid/1", "transport" },
      { "/huge-header/1", "transport", "too_large" },
    } do
      local t0 = socket.gettime()
      local ok, kind, _, reason, _, text = fire(bad.url .. case[1], "{ retries = 0, timeout = 1, allow_private = true }")
      local took = socket.gettime() - t0
      assert.is_false(ok, case[1])
      assert.equal(case[2], kind, case[1] .. ": " .. tostring(text))
      if case[3] then assert.equal(case[3], reason, case[1]) end
      assert.is_true(took < 2, ("%s took %.2f s"):format(case[1], took))
    end
  end)

  it("refuses private destinations by default, with nothing sent", function()
    local port = recv.port
    for _, url in ipairs {
      "http://127.0.0.1:%d/p1", "http://localhost:%d/p1", "http://[::1]:%d/p1", "http://2130706433:%d/p1",
      "http://0177.0.0.1:%d/p1", "http://[::ffff:127.0.0.1]:%d/p1", "http://0.0.0.0:%d/p1",
      "http://10.0.0.1:%d/p1", "http://169.254.169.254:%d/p1", "http://192.168.1.1:%d/p1",
      "http://100.64.0.1:%d/p1",
    } do
      url = url:format(port)
      local ok, kind, code, _, retryable, text = fire(url)
      assert.is_false(ok, url)
      assert.equal("validation", kind, url)
      assert.equal("blocked_address", code, url .. ": " .. tostring(text))
      assert.is_false(retryable)
      assert.truthy(text:find("allow_networks", 1, true), text)
    end
    assert.equal(0, received("/p1"))
  end)

  it("lets loopback through with allow_private or an allow_networks entry, not another network", function()
    local base = recv.url
    assert.is_true((fire(base .. "/p2", "{ retries = 0, allow_private = true }")))
    assert.is_true((fire(base .. "/p2", "{ retries = 0, allow_networks = { '127.0.0.0/8' } }")))
    assert.is_true((fire(base:gsub("127%.0%.0%.1", "localhost") .. "/p2",
      "{ retries = 0, allow_networks = { '127.0.0.0/8', '::1/128' } }")))
    local ok, _, code = fire(base .. "/p3", "{ retries = 0, allow_networks = { '10.1.0.0/16' } }")
    assert.is_false(ok)
    assert.equal("blocked_address", code)
    assert.equal(3, received("/p2"))
    assert.equal(0, received("/p3"))
  end)

  it("resolves names with nginx's DNS library and checks every address it gets", function()
    local ns = ("nameservers = { '127.0.0.1:%d' }"):format(dns.port)
    local pb = ("http://pb.test:%d"):format(recv.port)
    -- pb.test is 127.0.0.1: refused, naming the address
    local ok, _, code, _, _, text, address = fire(pb .. "/d1", "{ retries = 0, " .. ns .. " }")
    assert.is_false(ok)
    assert.equal("blocked_address", code)
    assert.equal("127.0.0.1", address)
    assert.truthy(text:find("pb.test", 1, true), text)
    ok, _, code = fire(("http://meta.test:%d/d1"):format(recv.port), "{ retries = 0, allow_networks = { '127.0.0.0/8' }, " .. ns .. " }")
    assert.is_false(ok)
    assert.equal("blocked_address", code)
    assert.equal(0, received("/d1"))
    -- allowed: connected to the checked address, Host keeps the name
    assert.is_true((fire(pb .. "/d2", "{ retries = 0, allow_networks = { '127.0.0.0/8' }, " .. ns .. " }")))
    local seen
    for _, line in ipairs(log_lines()) do
      if line:find("/d2", 1, true) then seen = line end
    end
    assert.truthy(seen and seen:find("^pb%.test "), tostring(seen))
    -- of two addresses, the refused one is skipped
    assert.is_true((fire(("http://mixed.test:%d/d3"):format(recv.port),
      "{ retries = 0, allow_networks = { '127.0.0.0/8' }, " .. ns .. " }")))
    assert.equal(1, received("/d3"))
    -- a name DNS does not know
    local nok, kind, _, reason = fire(("http://nope.test:%d/d4"):format(recv.port),
      "{ retries = 0, allow_private = true, " .. ns .. " }")
    assert.is_false(nok)
    assert.equal("transport", kind)
    assert.equal("resolve", reason)
  end)

  it("sends a URL's user info as Basic credentials with allow_userinfo, as libcurl does; refuses it without", function()
    local function with_userinfo(userinfo, path)
      return (bad.url:gsub("://", function() return "://" .. userinfo .. "@" end)) .. path
    end
    for i, case in ipairs { { "u:p", "dTpw" }, { "u%40x:p%3Aq", "dUB4OnA6cQ==" }, { "u", "dTo=" } } do
      local ok, body, url, text = n:run(([[
        local r, err = require("postback").fire(%q, nil, { retries = 0, allow_private = true, allow_userinfo = true })
        return r and r.ok, r and r.body, r and r.url, err and tostring(err)
      ]]):format(with_userinfo(case[1], "/echo-auth-ok/u" .. i)))
      assert.is_true(ok, text)
      assert.truthy(body:find("Authorization: Basic " .. case[2] .. " ", 1, true), body)
      assert.equal(bad.url .. "/echo-auth-ok/u" .. i, url) -- the result's URL without the credentials
    end
    local ok, kind, code = fire(with_userinfo("u:p", "/echo-auth-ok/refused"), "{ retries = 0, allow_private = true }")
    assert.is_false(ok)
    assert.equal("validation", kind)
    assert.equal("invalid_url", code)
    assert.is_nil(bad:counts()["/echo-auth-ok/refused"])
  end)

  it("refuses a request over max_url as too_long and a bad URL as invalid_url, as the libcurl transport does", function()
    local codes = n:run([[
      local t = require("postback.transport.ngx").new { allow_private = true }
      local codes = {}
      for _, url in ipairs { "http://127.0.0.1/" .. ("x"):rep(100), "ftp://127.0.0.1/", "http://127.0.0.1/a b" } do
        local r, err = t:request { url = url, max_url = 64 }
        codes[#codes + 1] = r and "sent" or (err.kind .. " " .. tostring(err.code) .. " " .. tostring(err.sent))
      end
      return codes
    ]])
    assert.same({ "validation too_long false", "validation invalid_url false", "validation invalid_url false" }, codes)
  end)

  it("does not check the API client's own base_url", function()
    local status, kind = n:run(([[
      local c = assert(require("postback").client { network = "n", api_key = "k", base_url = %q, retries = 0 })
      local pb, err = c:get(1)
      return err and err.status, err and err.kind
    ]]):format(recv.url))
    -- reached (nginx answers 204 with no body): a decode error, not a refusal
    assert.equal(204, status)
    assert.equal("decode", kind)
  end)

  it("speaks TLS with verification on: the trusted certificate and its name, nothing else", function()
    local ok = fire(("https://localhost:%d/t1"):format(tls_ok), "{ retries = 0, allow_private = true }")
    assert.is_true(ok)
    assert.is_true((fire(("https://pb.test:%d/t1"):format(tls_ok),
      ("{ retries = 0, allow_private = true, nameservers = { '127.0.0.1:%d' } }"):format(dns.port))))
    -- the address is not a name of the certificate
    local ok2, kind, _, reason, retryable, text = fire(("https://127.0.0.1:%d/t2"):format(tls_ok),
      "{ retries = 0, allow_private = true }")
    assert.is_false(ok2)
    assert.equal("transport", kind)
    assert.equal("tls", reason, text)
    assert.is_false(retryable)
    -- a certificate nginx does not trust
    local ok3, _, _, reason3 = fire(("https://localhost:%d/t3"):format(tls_untrusted), "{ retries = 0, allow_private = true }")
    assert.is_false(ok3)
    assert.equal("tls", reason3)
    assert.equal(0, received("/t2") + received("/t3"))
    -- insecure is the explicit way out
    assert.is_true((fire(("https://localhost:%d/t4"):format(tls_untrusted),
      "{ retries = 0, allow_private = true, insecure = true }")))
    assert.equal(1, received("/t4"))
  end)

  it("reuses kept-alive connections, TLS included, and keeps no more than it may", function()
    -- one fire_many a destination: each transport leaves at most its
    -- concurrency idle (max_idle), and past that closes what it used
    local count = n:run(([[
      local postback = require "postback"
      local ok = 0
      for _, base in ipairs { %q, %q } do
        local items = {}
        for i = 1, 200 do items[i] = base .. i end
        for _, r in ipairs(postback.fire_many(items, { concurrency = 4, allow_private = true, retries = 0 })) do
          if r.ok then ok = ok + 1 end
        end
      end
      return ok
    ]]):format(recv.url .. "/k1?i=", ("https://localhost:%d/k2?i="):format(tls_ok)))
    assert.equal(400, count)
    local plain, tls = {}, {}
    for _, line in ipairs(log_lines()) do
      local conn, uri = line:match("^%S+ (%d+) (%S+)")
      if uri and uri:find("^/k1") then plain[conn] = true end
      if uri and uri:find("^/k2") then tls[conn] = true end
    end
    local np, nt = 0, 0
    for _ in pairs(plain) do np = np + 1 end
    for _ in pairs(tls) do nt = nt + 1 end
    assert.is_true(np <= 4, np .. " connections for 200 plain postbacks")
    assert.is_true(nt <= 4, nt .. " connections for 200 TLS postbacks")
  end)
end)
