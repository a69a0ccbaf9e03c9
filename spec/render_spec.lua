-- Rendering rules: placeholders, encoding, value types, missing values,
-- errors, large inputs, a randomised comparison with a pure-Lua reference
-- renderer, and renders re-entered from metamethods.
local postback = require "postback"
local F = require "fixtures"

local render = postback.render

-- Renders with both entry points and checks they agree.
local function both(code, values, opts)
  local a, ea = render(code, values, opts)
  local b, eb = postback.template(code):render(values, opts)
  assert.are.equal(a, b)
  if ea or eb then
    assert.are.equal(ea and ea.code, eb and eb.code)
    assert.are.equal(ea and ea.macro, eb and eb.macro)
  end
  return a, ea
end

-- Asserts that rendering fails with a validation error of the given code.
local function assert_render_error(code, values, opts, ecode, macro)
  local s, err = render(code, values, opts)
  assert.is_nil(s)
  assert.are.equal("table", type(err))
  assert.are.equal(postback.Error, getmetatable(err))
  assert.are.equal("validation", err.kind)
  assert.are.equal(ecode, err.code)
  assert.are.equal(macro, err.field)
  assert.are.equal(macro, err.macro)
  assert.are.equal("string", type(err.message))
  local text = tostring(err)
  assert.are.equal("string", type(text))
  assert.truthy(text:find("{" .. macro .. "}", 1, true), text)
  assert.falsy(text:find("^table: "), text)
  return err
end

describe("postback.render placeholders", function()
  it("substitutes {name} for names made of letters, digits and underscores", function()
    assert.are.equal("https://t.example/p?c=abc&o=42",
      both("https://t.example/p?c={click_id}&o={offer_id}", { click_id = "abc", offer_id = 42 }))
    assert.are.equal("[v1][v2][v3][v4]",
      both("[{A}][{z9}][{_}][{9_Z_a}]", { A = "v1", z9 = "v2", _ = "v3", ["9_Z_a"] = "v4" }))
  end)

  it("keeps every other brace text literally", function()
    local code = "{}{a-b}{ x }{click id}{click-id}{é}{click_id.x}"
    assert.are.equal(code, both(code, { ["a-b"] = "no", x = "no", click_id = "no" }))
  end)

  it("keeps an unclosed placeholder and stray braces literally", function()
    assert.are.equal("https://t.example/?c={click_id", both("https://t.example/?c={click_id",
      { click_id = "x" }))
    assert.are.equal("}click_id{", both("}click_id{", { click_id = "x" }))
    assert.are.equal("{", both("{", { click_id = "x" }))
    assert.are.equal("}", both("}", { click_id = "x" }))
    assert.are.equal("{click_id", both("{click_id", { click_id = "x" }))
  end)

  it("replaces the inner placeholder of {{click_id}} and keeps the outer braces", function()
    assert.are.equal("{VALUE}", both("{{click_id}}", { click_id = "VALUE" }))
    assert.are.equal("{{VALUE}}", both("{{{click_id}}}", { click_id = "VALUE" }))
  end)

  it("recognises percent-encoded placeholders in every hex case", function()
    local v = { click_id = "C" }
    assert.are.equal("C", both("%7Bclick_id%7D", v))
    assert.are.equal("C", both("%7bclick_id%7d", v))
    assert.are.equal("C", both("%7Bclick_id%7d", v))
    assert.are.equal("C", both("%7bclick_id%7D", v))
    assert.are.equal("https://t.example/?a=C&b=C&c=C",
      both("https://t.example/?a=%7Bclick_id%7D&b={click_id}&c=%7bclick_id%7d", v))
  end)

  it("does not treat mixed forms as placeholders", function()
    local v = { click_id = "C" }
    assert.are.equal("{click_id%7D", both("{click_id%7D", v))
    assert.are.equal("%7Bclick_id}", both("%7Bclick_id}", v))
    assert.are.equal("%7B%7D", both("%7B%7D", v))
    assert.are.equal("%7Bclick-id%7D", both("%7Bclick-id%7D", v))
    assert.are.equal("%7B click_id%7D", both("%7B click_id%7D", v))
    assert.are.equal("%7click_id%7D", both("%7click_id%7D", v))
    assert.are.equal("%7Cclick_id%7D", both("%7Cclick_id%7D", v))
    assert.are.equal("%7Bclick_id%7", both("%7Bclick_id%7", v))
    assert.are.equal("%", both("%", v))
    assert.are.equal("%7", both("%7", v))
    assert.are.equal("%7B", both("%7B", v))
  end)

  it("renders the empty template and literal-only templates unchanged", function()
    assert.are.equal("", both("", nil))
    assert.are.equal("", both("", { click_id = "x" }))
    assert.are.equal("", both("", nil, { missing = "error" }))
    local lit = "https://t.example/fixed?a=1&b=%20%41 {} { } \0 é"
    assert.are.equal(lit, both(lit, { click_id = "x" }))
    assert.are.equal(lit, both(lit, nil, { missing = "error", encode = "none" }))
  end)

  it("renders bytes around placeholders exactly, NUL bytes included", function()
    assert.are.equal("\0a\0", both("\0{click_id}\0", { click_id = "a" }))
    assert.are.equal("\0%00\0", both("\0{click_id}\0", { click_id = "\0" }))
    assert.are.equal("\0\0\0", both("\0{click_id}\0", { click_id = "\0" }, { encode = "none" }))
  end)

  it("renders repeated and adjacent placeholders", function()
    assert.are.equal("aaa", both("{click_id}{click_id}{click_id}", { click_id = "a" }))
    assert.are.equal("a1b", both("{click_id}{offer_id}{ip}", { click_id = "a", offer_id = 1, ip = "b" }))
  end)
end)

describe("postback.render encoding", function()
  it("percent-encodes values by default, keeping only A-Z a-z 0-9 - . _ ~", function()
    assert.are.equal("a%20b%26c%3Dd%2Fe%3Ff%23g%25h%2Bi~j-k.l_m",
      both("{click_id}", { click_id = "a b&c=d/e?f#g%h+i~j-k.l_m" }))
  end)

  it("uses uppercase hex digits", function()
    assert.are.equal("%FF%AB%3A%2C", both("{click_id}", { click_id = "\255\171:," }))
  end)

  it("encodes once (an already-encoded value is encoded again, not decoded)", function()
    assert.are.equal("%2541%2520", both("{click_id}", { click_id = "%41%20" }))
    assert.are.equal("%257Bclick_id%257D", both("{click_id}", { click_id = "%7Bclick_id%7D" }))
  end)

  it("never encodes literal text of the template", function()
    assert.are.equal("https://t.example/a b?x=%41&y=1%202",
      both("https://t.example/a b?x=%41&y={click_id}", { click_id = "1 2" }))
  end)

  it("does not re-scan substituted values for placeholders", function()
    assert.are.equal("{offer_id}", both("{click_id}", { click_id = "{offer_id}", offer_id = 5 },
      { encode = "none" }))
    assert.are.equal("%7Boffer_id%7D", both("{click_id}", { click_id = "{offer_id}", offer_id = 5 }))
  end)

  it("encodes each of the 256 byte values exactly like an independent encoder", function()
    for b = 0, 255 do
      local c = string.char(b)
      local want = F.ref_encode(c)
      if F.is_unreserved(b) then
        assert.are.equal(c, want)
      else
        assert.are.equal(string.format("%%%02X", b), want)
      end
      local got = render("{click_id}", { click_id = c })
      assert.are.equal(want, got, "byte " .. b)
      assert.are.equal(want, postback.encode(c), "encode() byte " .. b)
    end
  end)

  it("encodes a string holding all 256 byte values", function()
    local s = F.ALL_BYTES
    local want = F.ref_encode(s)
    assert.are.equal(256 + 2 * (256 - 66), #want)
    local got = both("<{click_id}>", { click_id = s })
    assert.are.equal("<" .. want .. ">", got)
    -- byte by byte, so a failure names the position
    local inner = got:sub(2, -2)
    local pos = 1
    for b = 0, 255 do
      local piece = F.ref_encode(string.char(b))
      assert.are.equal(piece, inner:sub(pos, pos + #piece - 1), "byte " .. b)
      pos = pos + #piece
    end
    assert.are.equal(#inner + 1, pos)
  end)

  it("leaves values raw with encode = \"none\"", function()
    local s = F.ALL_BYTES
    assert.are.equal("<" .. s .. ">", both("<{click_id}>", { click_id = s }, { encode = "none" }))
    assert.are.equal("a b&c", both("{click_id}", { click_id = "a b&c" }, { encode = "none" }))
  end)

  it("encodes UTF-8 text byte by byte", function()
    local s = "h" .. string.char(195, 169) .. "llo w" .. string.char(195, 182) .. "rld "
      .. string.char(226, 156, 147) .. string.char(240, 159, 152, 128)
    assert.are.equal("h%C3%A9llo%20w%C3%B6rld%20%E2%9C%93%F0%9F%98%80",
      both("{click_id}", { click_id = s }))
    assert.are.equal(s, both("{click_id}", { click_id = s }, { encode = "none" }))
    -- invalid UTF-8 is just bytes
    assert.are.equal("%C3%28%FE", both("{click_id}", { click_id = string.char(195, 40, 254) }))
  end)

  it("postback.encode agrees with the independent encoder", function()
    assert.are.equal("", postback.encode(""))
    assert.are.equal("AZaz09-._~", postback.encode("AZaz09-._~"))
    assert.are.equal("%20%21%2A%27%28%29%3B%3A%40%26%3D%2B%24%2C%2F%3F%23%5B%5D",
      postback.encode(" !*'();:@&=+$,/?#[]"))
    assert.are.equal(F.ref_encode(F.ALL_BYTES), postback.encode(F.ALL_BYTES))
  end)
end)

describe("postback.render values", function()
  it("writes strings as they are (empty string included)", function()
    assert.are.equal("[]", both("[{click_id}]", { click_id = "" }))
    assert.are.equal("[abc]", both("[{click_id}]", { click_id = "abc" }))
  end)

  it("writes integers in decimal, negatives included", function()
    assert.are.equal("0", both("{click_id}", { click_id = 0 }))
    assert.are.equal("42", both("{click_id}", { click_id = 42 }))
    assert.are.equal("-7", both("{click_id}", { click_id = -7 }))
    assert.are.equal("-7", both("{click_id}", { click_id = -7 }, { encode = "none" }))
    assert.are.equal("9007199254740991", both("{click_id}", { click_id = 9007199254740991 }))
  end)

  it("writes math.maxinteger and math.mininteger exactly", function()
    if not F.has_integers then
      pending("no integer subtype on " .. _VERSION)
      return
    end
    assert.are.equal("9223372036854775807", both("{click_id}", { click_id = math.maxinteger }))
    assert.are.equal("-9223372036854775808", both("{click_id}", { click_id = math.mininteger }))
  end)

  it("writes floats with %.14g", function()
    assert.are.equal("1.5", both("{click_id}", { click_id = 1.5 }))
    assert.are.equal("8", both("{click_id}", { click_id = 8.0 }))
    assert.are.equal("0.3", both("{click_id}", { click_id = 0.1 + 0.2 }))
    assert.are.equal("-2.25", both("{click_id}", { click_id = -2.25 }))
    assert.are.equal("3.1415926535898", both("{click_id}", { click_id = math.pi }))
    assert.are.equal("1e-07", both("{click_id}", { click_id = 1e-7 }))
    assert.are.equal("0.333", both("{payout}", { payout = 0.333 }))
  end)

  it("writes integral floats up to 2^53 in all their digits (decoded JSON integers)", function()
    assert.are.equal("1000000000000000", both("{click_id}", { click_id = 1e15 }))
    assert.are.equal("100000000000000", both("{click_id}", { click_id = 1e14 }))
    assert.are.equal("123456789012345", both("{aff_id}", { aff_id = 123456789012345.0 }))
    assert.are.equal("9007199254740991", both("{aff_id}", { aff_id = 2 ^ 53 - 1 }))
    assert.are.equal("9007199254740992", both("{aff_id}", { aff_id = 2 ^ 53 }))
    -- what the dispatcher's spool gives back after a restart: the same URL
    local cjson = require "cjson"
    local values = cjson.decode('{"aff_id": 123456789012345}')
    assert.are.equal("https://r.example/?a=123456789012345",
      postback.render("https://r.example/?a={aff_id}", values))
  end)

  it("writes larger floats in exponent form, url-encoding the '+'", function()
    assert.are.equal("1e%2B100", both("{click_id}", { click_id = 1e100 }))
    assert.are.equal("1e+100", both("{click_id}", { click_id = 1e100 }, { encode = "none" }))
    assert.are.equal("1.2345678901235e%2B17", both("{click_id}", { click_id = 123456789012345678.0 }))
  end)

  it("writes booleans as true and false", function()
    assert.are.equal("true/false", both("{click_id}/{ip}", { click_id = true, ip = false }))
    assert.are.equal("false", both("{click_id}", { click_id = false }, { missing = "error" }))
  end)

  it("returns nil, err for NaN and infinities", function()
    assert_render_error("x={click_id}", { click_id = 0 / 0 }, nil, "bad_value", "click_id")
    assert_render_error("x={click_id}", { click_id = math.huge }, nil, "bad_value", "click_id")
    assert_render_error("x={click_id}", { click_id = -math.huge }, nil, "bad_value", "click_id")
    assert_render_error("x={foo}", { foo = math.huge }, { encode = "none" }, "bad_value", "foo")
  end)

  it("returns nil, err for tables, functions, userdata and threads", function()
    local bad = {
      {}, { 1, 2 }, print, function() end, io.stdout, coroutine.create(function() end),
      postback.template("x"),
    }
    for _, v in ipairs(bad) do
      local err = assert_render_error("a={offer_id}&b={payout}", { offer_id = 1, payout = v },
        nil, "bad_value", "payout")
      assert.truthy(err.message:find(type(v), 1, true), err.message)
    end
    -- undocumented names too
    assert_render_error("{foo}", { foo = {} }, nil, "bad_value", "foo")
  end)

  it("reports the first failing placeholder in template order", function()
    assert_render_error("{ip}{payout}", { ip = {}, payout = {} }, nil, "bad_value", "ip")
    assert_render_error("{payout}{ip}", { ip = {}, payout = 1 }, nil, "bad_value", "ip")
    assert_render_error("{ip}{payout}", { payout = {} }, { missing = "error" }, "missing", "ip")
  end)

  it("accepts a nil values table as no values", function()
    assert.are.equal("a=&b={foo}", both("a={click_id}&b={foo}", nil))
    assert.are.equal("a={click_id}", both("a={click_id}", nil, { missing = "keep" }))
    assert_render_error("a={click_id}", nil, { missing = "error" }, "missing", "click_id")
  end)

  it("honours an __index metamethod on the values table", function()
    local asked = {}
    local values = setmetatable({ offer_id = 9 }, {
      __index = function(_, k)
        asked[#asked + 1] = k
        if k == "click_id" then return "from index" end
      end,
    })
    assert.are.equal("from%20index/9/", render("{click_id}/{offer_id}/{ip}", values))
    table.sort(asked)
    assert.are.same({ "click_id", "ip" }, asked)
    local proto = { click_id = "p" }
    assert.are.equal("p", render("{click_id}", setmetatable({}, { __index = proto })))
  end)
end)

describe("postback.render missing values", function()
  local code = "a={click_id}&b=%7Bpayout%7D&c=%7bip%7d&d={foo}&e=%7Bbar%7D"

  it("renders documented macros without a value as empty by default", function()
    assert.are.equal("a=&b=&c=&d={foo}&e=%7Bbar%7D", both(code, {}))
    assert.are.equal("a=&b=&c=&d={foo}&e=%7Bbar%7D", both(code, {}, { missing = "empty" }))
  end)

  it("keeps placeholders exactly as written with missing = \"keep\"", function()
    assert.are.equal(code, both(code, {}, { missing = "keep" }))
    assert.are.equal("a=1&b=%7Bpayout%7D&c=%7bip%7d&d={foo}&e=%7Bbar%7D",
      both(code, { click_id = 1 }, { missing = "keep" }))
  end)

  it("returns nil, err with code \"missing\" with missing = \"error\"", function()
    local err = assert_render_error(code, {}, { missing = "error" }, "missing", "click_id")
    assert.truthy(err.message:find("click_id", 1, true))
    assert_render_error(code, { click_id = "x" }, { missing = "error" }, "missing", "payout")
    assert.are.equal("a=x&b=1&c=2&d={foo}&e=%7Bbar%7D",
      both(code, { click_id = "x", payout = 1, ip = 2 }, { missing = "error" }))
  end)

  it("does not count an empty string or false as missing", function()
    assert.are.equal("a=", both("a={click_id}", { click_id = "" }, { missing = "error" }))
    assert.are.equal("a=", both("a={click_id}", { click_id = "" }, { missing = "keep" }))
    assert.are.equal("a=false", both("a={click_id}", { click_id = false }, { missing = "keep" }))
  end)

  it("keeps undocumented placeholders without a value under every mode", function()
    for _, m in ipairs({ "empty", "keep", "error" }) do
      for _, e in ipairs({ "url", "none" }) do
        assert.are.equal("{foo}%7Bbar%7D{Click_ID}", both("{foo}%7Bbar%7D{Click_ID}", {},
          { missing = m, encode = e }))
      end
    end
  end)

  it("substitutes undocumented placeholders when a value is given", function()
    assert.are.equal("x%20y|2|z", both("{foo}|%7Bbar%7D|{Click_ID}", { foo = "x y", bar = 2, Click_ID = "z" }))
  end)

  it("treats every documented macro as documented", function()
    for _, name in ipairs(F.MACROS) do
      assert.are.equal("[]", both("[{" .. name .. "}]", nil), name)
      assert.are.equal("[%7B" .. name .. "%7D]", both("[%7B" .. name .. "%7D]", nil,
        { missing = "keep" }), name)
      assert_render_error("{" .. name .. "}", nil, { missing = "error" }, "missing", name)
      -- names are case-sensitive: upper case is undocumented
      assert.are.equal("{" .. name:upper() .. "}", both("{" .. name:upper() .. "}", nil,
        { missing = "error" }), name)
    end
  end)
end)

describe("postback.render arguments", function()
  it("raises on bad option values", function()
    local ok, msg = pcall(render, "x", nil, { missing = "bogus" })
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument", 1, true), msg)
    ok, msg = pcall(render, "x", nil, { encode = 5 })
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument", 1, true), msg)
    ok, msg = pcall(render, "x", nil, { encode = "html" })
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument", 1, true), msg)
    local t = postback.template("x")
    ok, msg = pcall(t.render, t, nil, { missing = true })
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument", 1, true), msg)
  end)

  it("raises on a values or options argument that is not a table", function()
    for _, args in ipairs({ { 5 }, { "x" }, { true }, { {}, 5 }, { nil, "keep" } }) do
      local ok, msg = pcall(render, "{click_id}", args[1], args[2])
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument", 1, true), msg)
      local t = postback.template("{click_id}")
      ok, msg = pcall(t.render, t, args[1], args[2])
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument", 1, true), msg)
    end
  end)

  it("raises on a code argument that is neither a string nor a template", function()
    for _, v in ipairs({ 5, {}, true }) do
      local ok, msg = pcall(render, v, {})
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
    end
    local ok, msg = pcall(render)
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
  end)

  it("renders a template object passed to postback.render", function()
    local t = postback.template("c={click_id}")
    assert.are.equal("c=a%20b", render(t, { click_id = "a b" }))
    assert.are.equal("c=a b", render(t, { click_id = "a b" }, { encode = "none" }))
  end)
end)

describe("postback.render sizes", function()
  it("renders 10,000 distinct macros", function()
    local parts, want, values = {}, {}, {}
    for i = 1, 10000 do
      parts[i] = "{m" .. i .. "}"
      values["m" .. i] = (i % 3 == 0) and i or ("v " .. i)
      want[i] = (i % 3 == 0) and tostring(i) or ("v%20" .. i)
    end
    local code = table.concat(parts, "&")
    local t = postback.template(code)
    local names = t:macros()
    assert.are.equal(10000, #names)
    assert.are.equal("m1", names[1])
    assert.are.equal("m5000", names[5000])
    assert.are.equal("m10000", names[10000])
    assert.are.equal(table.concat(want, "&"), t:render(values))
    -- undocumented names without values stay literal
    assert.are.equal(code, t:render({}))
    assert.are.equal(code, t:render(nil, { missing = "error" }))
    -- half of them given
    local half, hwant = {}, {}
    for i = 1, 10000 do
      if i % 2 == 0 then half["m" .. i] = "x" end
      hwant[i] = (i % 2 == 0) and "x" or ("{m" .. i .. "}")
    end
    assert.are.equal(table.concat(hwant, "&"), t:render(half))
    -- an error on the last one is reported by name
    values.m10000 = {}
    local s, err = t:render(values)
    assert.is_nil(s)
    assert.are.equal("m10000", err.macro)
  end)

  it("renders 10,000 repetitions of one macro", function()
    local code = string.rep("{click_id}", 10000)
    local t = postback.template(code)
    assert.are.same({ "click_id" }, t:macros())
    assert.are.equal(string.rep("a%20b", 10000), t:render({ click_id = "a b" }))
    assert.are.equal("", t:render({}))
    assert.are.equal(code, t:render({}, { missing = "keep" }))
    local enc = string.rep("%7Bclick_id%7D-", 10000)
    assert.are.equal(string.rep("7-", 10000), render(enc, { click_id = 7 }))
  end)

  it("renders 10,000 documented macros cycling through all 28 names", function()
    local parts, values, want = {}, {}, {}
    for i, name in ipairs(F.MACROS) do values[name] = name .. "=" .. i end
    for i = 1, 10000 do
      local name = F.MACROS[(i - 1) % 28 + 1]
      parts[i] = "{" .. name .. "}"
      want[i] = F.ref_encode(values[name])
    end
    local t = postback.template(table.concat(parts, "/"))
    assert.are.same(F.MACROS, t:macros())
    assert.are.equal(table.concat(want, "/"), t:render(values))
  end)

  it("renders a 1 MiB value, encoded and raw", function()
    local chunk = F.ALL_BYTES
    local big = string.rep(chunk, 4096)
    assert.are.equal(1048576, #big)
    local want = string.rep(F.ref_encode(chunk), 4096)
    local t = postback.template("a={click_id}&b")
    local got = t:render({ click_id = big })
    assert.are.equal(#want + 4, #got)
    assert.are.equal("a=" .. want .. "&b", got)
    assert.are.equal("a=" .. big .. "&b", t:render({ click_id = big }, { encode = "none" }))
    -- the template still renders small values afterwards
    assert.are.equal("a=x&b", t:render({ click_id = "x" }))
    assert.are.equal(want, postback.encode(big))
  end)

  it("renders a 1 MiB literal template", function()
    local code = string.rep("abcdefgh", 131072) .. "{click_id}"
    assert.are.equal(string.rep("abcdefgh", 131072) .. "Z", render(code, { click_id = "Z" }))
  end)
end)

describe("postback.render against a reference renderer", function()
  local DOC = F.MACROS
  local UNDOC = { "x", "foo", "Click_ID", "a1", "_", "9", "click_id2", "CLICK", "z_Z_9" }
  local TEXT = {
    "https://t.example/p?", "&", "=", "/", "?", "#", " ", "%", "%2", "%41", "%7", "%7B", "%7b",
    "%7D", "%7d", "{", "}", "{}", "{ x }", "{a-b}", "a", "Z", "0", "_", "-", "~",
    string.char(195, 169), "\0", "\n", "7B", "7D", "{{", "}}",
  }
  local SCHARS = {
    "a", "Z", "0", " ", "%", "&", "=", "+", "/", "{", "}", "~", "-", ".", "_", "\0", "\255",
    string.char(226, 156, 147), "click_id", "%7B", "\r\n",
  }

  local function pick(list) return list[math.random(1, #list)] end

  local function random_name()
    if math.random() < 0.7 then return pick(DOC) end
    return pick(UNDOC)
  end

  local function random_piece()
    local r = math.random(1, 16)
    local name = random_name()
    if r <= 4 then return "{" .. name .. "}"
    elseif r == 5 then return "%7B" .. name .. "%7D"
    elseif r == 6 then return "%7b" .. name .. "%7d"
    elseif r == 7 then return (math.random() < 0.5 and "%7B" or "%7b") .. name
        .. (math.random() < 0.5 and "%7D" or "%7d")
    elseif r == 8 then return "{{" .. name .. "}}"
    elseif r == 9 then return "{" .. name .. "%7D"
    elseif r == 10 then return "%7B" .. name .. "}"
    elseif r == 11 then return "{" .. name
    elseif r == 12 then return name .. "}"
    else return pick(TEXT) end
  end

  local function random_string()
    local n = math.random(0, 6)
    local t = {}
    for i = 1, n do t[i] = pick(SCHARS) end
    return table.concat(t)
  end

  local function random_value()
    local r = math.random(1, 100)
    if r <= 35 then return random_string()
    elseif r <= 55 then return math.random(-100000, 100000)
    elseif r <= 60 then
      if F.has_integers then
        return pick({ math.maxinteger, math.mininteger, 0, -1 })
      end
      return pick({ 2 ^ 53 - 1, -(2 ^ 53 - 1), 0, -1 })
    elseif r <= 75 then
      -- LuaJIT's own string.format rounds exact ties (9293032480170850 at
      -- %.14g) half up where C's printf rounds half to even; keep its floats
      -- below the range where such ties occur so the reference stays exact.
      local v = math.random() * 10 ^ math.random(-8, jit and 12 or 20)
      if math.random() < 0.3 then v = -v end
      return v
    elseif r <= 80 then return pick({ 0.5, 1.5, 8.0, 0.1 + 0.2, 1e15, 1e-7, 2 ^ 53, 123.456 })
    elseif r <= 88 then return math.random() < 0.5
    elseif r <= 89 then return {}
    elseif r <= 90 then return 0 / 0
    else return nil end
  end

  local MISSING = { false, "empty", "keep", "error" }
  local ENCODE = { false, "url", "none" }

  it("agrees on thousands of random templates and values", function()
    math.randomseed(20240601)
    local n = F.size(3000)
    for case = 1, n do
      local pieces = {}
      for i = 1, math.random(0, 12) do pieces[i] = random_piece() end
      local code = table.concat(pieces)
      local values = {}
      for _, name in ipairs(F.ref_macros(code)) do
        values[name] = random_value()
      end
      -- sometimes a value for a name the template does not use
      if math.random() < 0.2 then values.unused = {} end
      local opts = nil
      if math.random() < 0.8 then
        opts = {}
        local m, e = pick(MISSING), pick(ENCODE)
        if m then opts.missing = m end
        if e then opts.encode = e end
      end
      local want, wcode, wmacro = F.ref_render(code, values, opts)
      local t = postback.template(code)
      local what = "case " .. case .. ": code=" .. F.show(code)
      assert.are.same(F.ref_macros(code), t:macros(), what)
      for pass = 1, 2 do
        local got, err
        if pass == 1 then got, err = t:render(values, opts) else got, err = render(code, values, opts) end
        if want then
          assert.are.equal(F.show(want), F.show(got), what)
          assert.are.equal(want, got, what)
          assert.is_nil(err, what)
        else
          assert.is_nil(got, what)
          assert.are.equal("table", type(err), what)
          assert.are.equal(wcode, err.code, what)
          assert.are.equal(wmacro, err.macro, what)
          assert.are.equal(wmacro, err.field, what)
        end
      end
    end
  end)

  it("agrees with the reference on every documented macro in every form and mode", function()
    for _, name in ipairs(F.MACROS) do
      local code = "x{" .. name .. "}y%7B" .. name .. "%7Dz%7b" .. name .. "%7d"
      for _, m in ipairs({ "empty", "keep", "error" }) do
        for _, e in ipairs({ "url", "none" }) do
          local opts = { missing = m, encode = e }
          for _, v in ipairs({ "a b", 3, 2.5, true }) do
            local values = { [name] = v }
            assert.are.equal(F.ref_render(code, values, opts), render(code, values, opts))
          end
          local want, wcode = F.ref_render(code, {}, opts)
          local got, err = render(code, {}, opts)
          assert.are.equal(want, got)
          assert.are.equal(wcode, err and err.code)
        end
      end
    end
  end)
end)

describe("postback.render re-entered from a metamethod", function()
  it("gives correct results for the inner and the outer render", function()
    local t = postback.template("a={click_id}&b={payout}&c={foo}")
    local inner, inner_err
    local values = setmetatable({}, {
      __index = function(_, k)
        if k == "click_id" then
          inner, inner_err = t:render({ click_id = "in ner", payout = 2, foo = "f" })
          return "outer value"
        elseif k == "payout" then
          return 7
        end
      end,
    })
    local out = t:render(values)
    assert.is_nil(inner_err)
    assert.are.equal("a=in%20ner&b=2&c=f", inner)
    assert.are.equal("a=outer%20value&b=7&c={foo}", out)
    -- and the template is still fine afterwards
    assert.are.equal("a=1&b=2&c=3", t:render({ click_id = 1, payout = 2, foo = 3 }))
  end)

  it("uses the inner result as a value of the outer render, nested several levels", function()
    local t = postback.template("<{click_id}|{ip}>")
    local depth = 0
    local values
    values = setmetatable({}, {
      __index = function(_, k)
        if k == "ip" then return depth end
        if depth >= 4 then return "end" end
        depth = depth + 1
        local s = assert(t:render(values, { encode = "none" }))
        depth = depth - 1
        return s
      end,
    })
    local got = t:render(values, { encode = "none" })
    -- recompute with the reference renderer, the same way
    local rdepth = 0
    local rvalues
    rvalues = setmetatable({}, {
      __index = function(_, k)
        if k == "ip" then return rdepth end
        if rdepth >= 4 then return "end" end
        rdepth = rdepth + 1
        local s = F.ref_render("<{click_id}|{ip}>", rvalues, { encode = "none" })
        rdepth = rdepth - 1
        return s
      end,
    })
    local want = F.ref_render("<{click_id}|{ip}>", rvalues, { encode = "none" })
    assert.are.equal(want, got)
    assert.are.equal("<<<<<end|4>|3>|2>|1>|0>", got)
    assert.are.equal(0, depth)
  end)

  it("re-enters with a large value and an error inside", function()
    local t = postback.template("{click_id}-{payout}")
    local big = string.rep("x y", 40000)
    local inner_big, inner_nil, inner_err
    local values = setmetatable({}, {
      __index = function(_, k)
        if k == "click_id" then
          inner_big = t:render({ click_id = big, payout = 1 })
          inner_nil, inner_err = t:render({ click_id = {}, payout = 1 })
          return "o"
        end
        return 5
      end,
    })
    assert.are.equal("o-5", t:render(values))
    assert.are.equal(string.rep("x%20y", 40000) .. "-1", inner_big)
    assert.is_nil(inner_nil)
    assert.are.equal("bad_value", inner_err.code)
    assert.are.equal("click_id", inner_err.macro)
  end)

  it("recovers after an error raised inside a metamethod", function()
    local t = postback.template("{click_id}")
    local values = setmetatable({}, { __index = function() error("boom", 0) end })
    local ok, msg = pcall(t.render, t, values)
    assert.is_false(ok)
    assert.are.equal("boom", msg)
    assert.are.equal("fine", t:render({ click_id = "fine" }))
  end)

  it("keeps reusing its buffers after an error raised inside a metamethod", function()
    local code = "https://t.example/p?c={click_id}&s={aff_sub}"
    local t = postback.template(code)
    local values = { click_id = "abc", aff_sub = "d" }
    local strict = setmetatable({}, { __index = function(_, k) error("no value for " .. k, 0) end })
    assert.is_false(pcall(render, code, strict))
    assert.is_false(pcall(t.render, t, strict))
    assert.is_false(pcall(render, t, strict))
    -- Every render below reuses a buffer: with the collector stopped, the
    -- Lua heap grows by little more than nothing (one new buffer at most; a
    -- buffer allocated per render would be 16 bytes and more each).
    local n = F.size(20000)
    local want = "https://t.example/p?c=abc&s=d"
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    for _ = 1, n do
      if render(code, values) ~= want or t:render(values) ~= want then
        collectgarbage("restart")
        error("a render went wrong")
      end
    end
    local grew = collectgarbage("count") - before
    collectgarbage("restart")
    assert.is_true(grew < 16, ("%d renders allocated %.1f KiB"):format(2 * n, grew))
  end)

  it("gives correct results to finalizers that render and encode while a result is copied", function()
    -- The copy of a long result allocates, so the collector runs finalizers
    -- then, while the buffer being copied is still in use.
    local json_encode = require("postback.core").json_encode
    local t = postback.template("https://t.example/?c={click_id}&p={payout}")
    local doc = { s = string.rep("ab\"c", 3000), n = { 1, 2, 3 } }
    local values = { click_id = string.rep("q", 5000), payout = 1 }
    local want_doc, want_t = assert(json_encode(doc)), t:render(values)
    local ran, wrong = 0, 0
    local function finalizer()
      ran = ran + 1
      if json_encode({ x = 1 }) ~= '{"x":1}' then wrong = wrong + 1 end
      if t:render({ click_id = "a b", payout = 2 }) ~= "https://t.example/?c=a%20b&p=2" then wrong = wrong + 1 end
      if render("{click_id}", { click_id = "z" }) ~= "z" then wrong = wrong + 1 end
    end
    local newproxy = newproxy -- Lua 5.1 and LuaJIT: only userdata have finalizers
    for _ = 1, F.size(5000) do
      if newproxy then
        getmetatable(newproxy(true)).__gc = finalizer
      else
        setmetatable({}, { __gc = finalizer })
      end
      if json_encode(doc) ~= want_doc then wrong = wrong + 1 end
      if t:render(values) ~= want_t then wrong = wrong + 1 end
      if render("{click_id}", values) ~= values.click_id then wrong = wrong + 1 end
    end
    collectgarbage("collect")
    assert.is_true(ran > 0)
    assert.are.equal(0, wrong)
  end)

  it("renders another template from inside a metamethod", function()
    local t1 = postback.template("1:{click_id}")
    local t2 = postback.template("2:{click_id}")
    local values = setmetatable({}, {
      __index = function() return t2:render({ click_id = "a&b" }) end,
    })
    assert.are.equal("1:2%3Aa%2526b", t1:render(values))
  end)
end)
