-- The public module table: version, constants, the macro list, errors, encode.
local postback = require "postback"
local F = require "fixtures"

-- The macro paragraph of offerslook-api.md, verbatim: the list is parsed
-- from it so its order is the documentation's.
local DOC_TEXT = [[
{click_id} {offer_id} {event_id} {country_id} {aff_id} {adv_id} {adv_sub1} {adv_sub2}
{adv_sub3} {aff_sub1} {aff_sub2} {aff_sub3} {aff_sub4} {aff_sub5} {source_id} {agent}
{click_time} {payout} {referer} {accept_lan} {ip} {unique_click} {currency} {ios_idfa}
{android_id} {google_aid} {conversion_ip} {amount}
]]

local function doc_macros()
  local out = {}
  for name in DOC_TEXT:gmatch("{([%w_]+)}") do out[#out + 1] = name end
  return out
end

describe("the postback module", function()
  it("is a table, the same one on every require", function()
    assert.are.equal("table", type(postback))
    assert.are.equal(postback, require("postback"))
  end)

  it("has a _VERSION like \"postback 0.1.0\"", function()
    assert.are.equal("string", type(postback._VERSION))
    assert.truthy(postback._VERSION:match("^postback %d+%.%d+%.%d+$"), postback._VERSION)
  end)

  it("has the postback type constants", function()
    assert.are.equal(1, postback.IMAGE_PIXEL)
    assert.are.equal(2, postback.POSTBACK_URL)
    assert.are.equal(3, postback.HTML_PIXEL)
    if F.has_integers then
      assert.are.equal("integer", math.type(postback.IMAGE_PIXEL))
      assert.are.equal("integer", math.type(postback.POSTBACK_URL))
      assert.are.equal("integer", math.type(postback.HTML_PIXEL))
    end
  end)

  it("exports the foundation functions", function()
    for _, name in ipairs({ "template", "render", "validate", "allowed_types", "encode" }) do
      assert.are.equal("function", type(postback[name]), name)
    end
  end)
end)

describe("postback.MACROS", function()
  it("holds the 28 documented names in documentation order", function()
    local want = doc_macros()
    assert.are.equal(28, #want)
    assert.are.same(want, F.MACROS)
    assert.are.equal(28, #postback.MACROS)
    assert.are.same(want, postback.MACROS)
    for i = 1, 28 do assert.are.equal(want[i], postback.MACROS[i], "index " .. i) end
    assert.is_nil(postback.MACROS[29])
    assert.is_nil(postback.MACROS[0])
  end)

  it("spells referer with one r and has accept_lan", function()
    local set = {}
    for _, n in ipairs(postback.MACROS) do set[n] = true end
    assert.is_true(set.referer)
    assert.is_nil(set.referrer)
    assert.is_true(set.accept_lan)
    assert.is_nil(set.accept_lang)
  end)

  it("lists distinct lowercase names made of [a-z0-9_]", function()
    local seen = {}
    for _, n in ipairs(postback.MACROS) do
      assert.are.equal("string", type(n))
      assert.truthy(n:match("^[a-z0-9_]+$"), n)
      assert.is_nil(seen[n], n)
      seen[n] = true
    end
  end)

  it("matches what render and validate treat as documented", function()
    for _, n in ipairs(postback.MACROS) do
      assert.are.equal("", postback.render("{" .. n .. "}"), n)
      assert.is_true(postback.validate({ offer_id = 1, affiliate_id = 1, type = 2,
        code = "https://t.example/?x={" .. n .. "}" }), n)
    end
    assert.are.equal("{clickid}", postback.render("{clickid}"))
  end)
end)

describe("postback errors", function()
  it("exposes the shared error metatable as postback.Error", function()
    assert.are.equal("table", type(postback.Error))
    local _, err = postback.render("{click_id}", { click_id = {} })
    assert.are.equal(postback.Error, getmetatable(err))
    local _, err2 = postback.allowed_types(9)
    assert.are.equal(postback.Error, getmetatable(err2))
  end)

  it("gives render errors kind, code, field, macro and a readable tostring", function()
    local _, err = postback.render("a={payout}", { payout = print })
    assert.are.equal("validation", err.kind)
    assert.are.equal("bad_value", err.code)
    assert.are.equal("payout", err.field)
    assert.are.equal("payout", err.macro)
    local s = tostring(err)
    assert.are.equal("string", type(s))
    assert.truthy(s:find("^validation error"), s)
    assert.truthy(s:find("{payout}", 1, true), s)
    assert.truthy(s:find("function", 1, true), s)

    _, err = postback.render("a={ip}", nil, { missing = "error" })
    assert.are.equal("missing", err.code)
    assert.are.equal("ip", err.field)
    assert.are.equal("ip", err.macro)
    s = tostring(err)
    assert.truthy(s:find("^validation error"), s)
    assert.truthy(s:find("{ip}", 1, true), s)
  end)

  it("gives allowed_types errors field conversion_protocol and a readable tostring", function()
    local _, err = postback.allowed_types(4)
    assert.are.equal("validation", err.kind)
    assert.are.equal("conversion_protocol", err.field)
    assert.are.equal("range", err.code)
    local s = tostring(err)
    assert.truthy(s:find("^validation error"), s)
    assert.truthy(s:find("conversion_protocol", 1, true), s)
    assert.truthy(s:find("4", 1, true), s)
  end)
end)

describe("postback.encode", function()
  it("keeps unreserved bytes and percent-encodes the rest with uppercase hex", function()
    assert.are.equal("", postback.encode(""))
    assert.are.equal("abcXYZ019-._~", postback.encode("abcXYZ019-._~"))
    assert.are.equal("a%20b%2Bc%25d%2Fe", postback.encode("a b+c%d/e"))
    assert.are.equal("%00%0A%7F%80%FF", postback.encode("\0\n" .. string.char(127, 128, 255)))
    assert.are.equal("%E2%82%AC", postback.encode(string.char(226, 130, 172)))
  end)

  it("matches the independent encoder on all 256 bytes", function()
    for b = 0, 255 do
      local c = string.char(b)
      assert.are.equal(F.ref_encode(c), postback.encode(c), "byte " .. b)
    end
  end)

  it("encodes once: encoding twice encodes the percent signs", function()
    local once = postback.encode("a b")
    assert.are.equal("a%20b", once)
    assert.are.equal("a%2520b", postback.encode(once))
  end)

  it("agrees with render's default encoding", function()
    math.randomseed(7)
    for _ = 1, F.size(500) do
      local t = {}
      for i = 1, math.random(0, 20) do t[i] = string.char(math.random(0, 255)) end
      local s = table.concat(t)
      assert.are.equal(postback.encode(s), postback.render("{click_id}", { click_id = s }))
    end
  end)

  it("raises bad argument for a non-string", function()
    for _, v in ipairs({ 5, {}, true }) do
      local ok, msg = pcall(postback.encode, v)
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
    end
  end)
end)

describe("postback.util.host_of", function()
  local util = require "postback.util"

  it("gives the host and port, lower case, without user info; nil without an authority", function()
    assert.equal("a.example:8080", util.host_of("https://u:p@A.Example:8080/x?y=@z#w"))
    assert.equal("[::1]:81", util.host_of("http://[::1]:81"))
    assert.equal("", util.host_of("http:///x"))
    assert.is_nil(util.host_of("a.example/x"))
    assert.is_nil(util.host_of(nil))
  end)
end)
