-- The destination policy and the URL forms, as the Lua layer and the
-- OpenResty transport reach them through postback.core.
local core = require "postback.core"

describe("core.netpolicy", function()
  it("refuses what is not global unicast, naming the address and its range", function()
    local p = assert(core.netpolicy())
    for _, ip in ipairs { "127.0.0.1", "10.0.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254",
                          "0.0.0.0", "::1", "::", "::ffff:127.0.0.1", "fe80::1", "fd00::1", "ff02::1",
                          "64:ff9b::a00:1", "2002:7f00:1::1", "2001:db8::1", "255.255.255.255" } do
      local ok, why = p:check(ip)
      assert.is_nil(ok, ip)
      assert.are.equal(ip, why:sub(1, #ip), why)
    end
    for _, ip in ipairs { "8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8" } do
      assert.is_true(p:check(ip), ip)
    end
    assert.are.same({ nil, "127.0.0.1 is a loopback address (127.0.0.0/8)" }, { p:check("127.0.0.1") })
    assert.are.same({ nil, "\"localhost\" is not an IP address" }, { p:check("localhost") })
  end)

  it("lets allowed networks and allow_private through", function()
    local p = assert(core.netpolicy { allow_networks = { "127.0.0.0/8", "fd00::/8" } })
    assert.is_true(p:check("127.0.0.1"))
    assert.is_true(p:check("::ffff:127.0.0.2"))
    assert.is_true(p:check("fd12::1"))
    assert.is_nil(p:check("10.0.0.1"))
    assert.is_nil(p:check("::1"))
    p = assert(core.netpolicy { allow_networks = { "10.1.0.0/16" } })
    assert.is_nil(p:check("127.0.0.1"))
    p = assert(core.netpolicy { allow_private = true })
    assert.is_true(p:check("127.0.0.1"))
    assert.is_true(p:check("::1"))
    assert.truthy(tostring(p):find("allow_private=true", 1, true))
  end)

  it("returns nil, reason for a network that does not parse; raises for wrong types", function()
    for _, bad in ipairs { "10.0.0.1/8", "10.0.0.0/33", "::/129", "localhost", "", "10.0.0.0/08" } do
      local p, why = core.netpolicy { allow_networks = { bad } }
      assert.is_nil(p, bad)
      assert.truthy(why:find("network \"" .. bad .. "\"", 1, true), why)
    end
    assert.has_error(function() core.netpolicy { allow_networks = "10.0.0.0/8" } end,
      "bad argument #1 to 'netpolicy' (option allow_networks must be a list of CIDR strings)")
    assert.has_error(function() core.netpolicy { allow_networks = { 10 } } end,
      "bad argument #1 to 'netpolicy' (allow_networks[1] must be a string, got number)")
    assert.has_error(function() core.netpolicy { allow_private = 1 } end,
      "bad argument #1 to 'netpolicy' (option allow_private must be a boolean)")
    assert.has_error(function() core.netpolicy("x") end)
    assert.has_error(function() core.netpolicy():check(1) end)
  end)
end)

describe("core.url_to_ascii and core.check_url", function()
  it("give the URL as sent: punycode, IPv4 as a.b.c.d, bytes >= 0x80 encoded", function()
    assert.are.equal("http://xn--mnchen-3ya.de/x", core.url_to_ascii("http://m\195\188nchen.de/x"))
    assert.are.equal("http://127.0.0.1/", core.url_to_ascii("http://2130706433/"))
    assert.are.equal("http://127.0.0.1:8080/a/../b?", core.url_to_ascii("http://0177.0.0.1:8080/a/../b?"))
    assert.are.equal("http://h/%C3%A9?%C3%A9", core.url_to_ascii("http://h/\195\169?\195\169"))
    local same = "http://h.example/a/./b?#f"
    assert.are.equal(same, core.url_to_ascii(same))
  end)

  it("refuse user info unless allowed, percent signs in hosts, bad IDNs", function()
    assert.are.same({ nil, "URL has user info (user:password@), refused unless allowed" },
      { core.url_to_ascii("http://u:p@h/") })
    assert.are.equal("http://u:p@h/", core.url_to_ascii("http://u:p@h/", true))
    assert.is_nil((core.check_url("http://u:p@h/")))
    assert.is_true(core.check_url("http://u:p@h/", true))
    for _, u in ipairs { "http://ex%00ample.com/", "http://good.com%2fevil/", "http://%7Bx%7D/",
                         "http://\255.example/", "http://good.example\239\188\143evil/" } do
      assert.is_nil((core.check_url(u)), u)
      assert.is_nil((core.url_to_ascii(u)), u)
    end
    assert.has_error(function() core.url_to_ascii(nil) end)
  end)
end)
