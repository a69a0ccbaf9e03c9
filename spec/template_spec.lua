-- postback.template: the parsed-once template object.
local postback = require "postback"
local F = require "fixtures"

describe("postback.template", function()
  it("returns a userdata whose tostring starts with postback.template", function()
    local t = postback.template("https://t.example/?c={click_id}")
    assert.are.equal("userdata", type(t))
    local s = tostring(t)
    assert.are.equal("postback.template", s:sub(1, #"postback.template"))
  end)

  it("never shows the code text in tostring", function()
    local code = "https://secret-host.example/p?token=TOKEN123&c={click_id}&x={myprivate}"
    local s = tostring(postback.template(code))
    for _, piece in ipairs({ "secret", "TOKEN123", "token", "click_id", "myprivate", "https",
      "example" }) do
      assert.falsy(s:find(piece, 1, true), s)
    end
  end)

  it("raises bad argument for a code that is not a string", function()
    local cases = { { 5, "number" }, { {}, "table" }, { true, "boolean" }, { nil, "nil" },
      { print, "function" } }
    for _, c in ipairs(cases) do
      local ok, msg = pcall(postback.template, c[1])
      assert.is_false(ok)
      msg = tostring(msg)
      assert.truthy(msg:find("bad argument #1", 1, true), msg)
      if c[2] ~= "nil" then
        assert.truthy(msg:find("(string expected, got " .. c[2] .. ")", 1, true), msg)
      end
    end
    local ok, msg = pcall(postback.template, 5)
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument #1 .*%(string expected, got number%)"), msg)
  end)

  it("accepts the empty string and any bytes", function()
    assert.are.equal("", postback.template(""):render({}))
    assert.are.equal(F.ALL_BYTES, postback.template(F.ALL_BYTES):render({}))
  end)

  it("has distinct render and macros methods", function()
    local t = postback.template("{click_id}")
    assert.are.equal("function", type(t.render))
    assert.are.equal("function", type(t.macros))
    assert.are_not.equal(t.render, t.macros)
    local u = postback.template("x")
    assert.are.equal(t.render, u.render) -- shared by all templates
  end)

  it("raises when a method is called on something that is not a template", function()
    local t = postback.template("{click_id}")
    for _, self in ipairs({ "x", 5, {} }) do
      local ok, msg = pcall(t.render, self, {})
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
      ok, msg = pcall(t.macros, self)
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
    end
    local ok = pcall(t.render)
    assert.is_false(ok)
  end)

  it("renders many times with different values", function()
    local t = postback.template("https://t.example/p?c={click_id}&p={payout}")
    assert.are.equal("https://t.example/p?c=1&p=2", t:render({ click_id = 1, payout = 2 }))
    assert.are.equal("https://t.example/p?c=a%20b&p=", t:render({ click_id = "a b" }))
    assert.are.equal("https://t.example/p?c=a b&p={payout}",
      t:render({ click_id = "a b" }, { encode = "none", missing = "keep" }))
    assert.are.equal("https://t.example/p?c=&p=", t:render())
    assert.are.equal("https://t.example/p?c=1&p=2", t:render({ click_id = 1, payout = 2 }))
  end)
end)

describe("template:macros", function()
  it("lists distinct names in order of first use", function()
    local t = postback.template("{payout}{click_id}{payout}%7Bip%7D{click_id}%7bfoo%7d{ip}{Foo}")
    assert.are.same({ "payout", "click_id", "ip", "foo", "Foo" }, t:macros())
  end)

  it("includes undocumented names and the inner name of {{x}}", function()
    assert.are.same({ "x", "click_id" }, postback.template("{x}{{click_id}}"):macros())
  end)

  it("ignores brace text that is not a placeholder", function()
    local t = postback.template("{}{a-b}{ x }{click_id%7D%7Bip}{unclosed")
    assert.are.same({}, t:macros())
  end)

  it("returns an empty list for an empty or literal-only template", function()
    assert.are.same({}, postback.template(""):macros())
    assert.are.same({}, postback.template("https://t.example/plain?x=1"):macros())
  end)

  it("returns a fresh table each time", function()
    local t = postback.template("{click_id}{payout}")
    local a = t:macros()
    a[1] = "changed"
    a[3] = "added"
    assert.are.same({ "click_id", "payout" }, t:macros())
    assert.are_not.equal(t:macros(), t:macros())
  end)

  it("lists 10,000 distinct names", function()
    local parts, want = {}, {}
    for i = 1, 10000 do
      parts[i] = "{n" .. (10001 - i) .. "}"
      want[i] = "n" .. (10001 - i)
    end
    assert.are.same(want, postback.template(table.concat(parts, ",")):macros())
  end)
end)

describe("template garbage collection", function()
  it("collects 20,000 templates and returns memory to about the start", function()
    local n = F.size(20000)
    collectgarbage("collect")
    collectgarbage("collect")
    local before = collectgarbage("count")
    local weak = setmetatable({}, { __mode = "v" })
    for i = 1, n do
      local t = postback.template("https://t.example/p?c={click_id}&n=" .. i .. "&m={m" .. i
        .. "}&{payout}")
      assert.are.equal("https://t.example/p?c=" .. i .. "&n=" .. i .. "&m={m" .. i .. "}&",
        t:render({ click_id = i }))
      if i % 97 == 0 then weak[i] = t end
      if i % 1000 == 0 then
        -- a big render now and then: the scratch buffer must go with the template
        assert.are.equal(300000, #t:render({ click_id = string.rep("x", 300000) }, { encode = "none" })
          - #("https://t.example/p?c=&n=" .. i .. "&m={m" .. i .. "}&"))
      end
    end
    local peak = collectgarbage("count")
    collectgarbage("collect")
    collectgarbage("collect")
    local after = collectgarbage("count")
    assert.is_nil(next(weak), "templates still reachable after a full collection")
    assert.is_true(after - before < 256,
      string.format("grew by %.1f KiB (before %.1f, peak %.1f, after %.1f)",
        after - before, before, peak, after))
  end)

  it("collects templates created through postback.render", function()
    local n = F.size(20000)
    collectgarbage("collect")
    collectgarbage("collect")
    local before = collectgarbage("count")
    for i = 1, n do
      assert.are.equal("x" .. i, postback.render("x{click_id}", { click_id = i }))
    end
    collectgarbage("collect")
    collectgarbage("collect")
    local after = collectgarbage("count")
    assert.is_true(after - before < 256, string.format("grew by %.1f KiB", after - before))
  end)

  it("keeps a template usable while it is referenced", function()
    local t = postback.template("{click_id}")
    for _ = 1, 3 do collectgarbage("collect") end
    assert.are.equal("ok", t:render({ click_id = "ok" }))
    assert.are.same({ "click_id" }, t:macros())
  end)
end)
