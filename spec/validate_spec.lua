-- postback.validate: every error code, the conversion_protocol rule, field
-- order, create and partial modes.
local postback = require "postback"
local F = require "fixtures"
local child = require "child"

local validate = postback.validate

local URL = "https://t.example/p?c={click_id}&o={offer_id}"
local HTML = '<img src="https://t.example/p?c={click_id}" width="1" height="1">'

-- Marks a field to remove in rec().
local NIL = {}

-- A valid create record for a type, with fields overridden.
local function rec(over, typ)
  typ = typ or 2
  local r = { offer_id = 5, affiliate_id = 7, type = typ, code = typ == 3 and HTML or URL }
  for k, v in pairs(over or {}) do
    if v == NIL then r[k] = nil else r[k] = v end
  end
  return r
end

-- {"field:code", ...} of a validation, {} when it passed; checks the shapes.
local function problems(r, opts)
  local ok, errs = validate(r, opts)
  if ok == true then
    assert.is_nil(errs)
    return {}
  end
  assert.are.equal(false, ok)
  assert.are.equal("table", type(errs))
  assert.is_true(#errs > 0)
  local out = {}
  for i, e in ipairs(errs) do
    assert.are.equal("string", type(e.field))
    assert.are.equal("string", type(e.code))
    assert.are.equal("string", type(e.message))
    assert.is_true(#e.message > 0)
    if e.code == "unknown_macro" then
      assert.are.equal("string", type(e.macro))
    end
    out[i] = e.field .. ":" .. e.code
  end
  return out, errs
end

local function assert_ok(r, opts)
  assert.are.same({}, (problems(r, opts)))
  assert.are.equal(true, (validate(r, opts)))
end

describe("postback.validate results", function()
  it("returns true alone for a valid record", function()
    local ok, errs = validate(rec())
    assert.are.equal(true, ok)
    assert.is_nil(errs)
    assert.are.equal(1, select("#", validate(rec())))
  end)

  it("returns false and an array of {field=, code=, message=}", function()
    local ok, errs = validate(rec({ type = 9 }))
    assert.are.equal(false, ok)
    assert.are.equal(1, #errs)
    assert.are.equal("type", errs[1].field)
    assert.are.equal("range", errs[1].code)
    assert.truthy(errs[1].message:find("type", 1, true))
    assert.truthy(errs[1].message:find("9", 1, true))
  end)

  it("accepts every documented field with a valid value", function()
    assert_ok({ id = 1, offer_id = 0, affiliate_id = 1, event_id = 1, type = 1, status = "approved",
      code = "http://a.example/", create_time = 0, update_time = 0 })
    assert_ok({ id = 9007199254740991, offer_id = 9007199254740991, affiliate_id = 9007199254740991,
      event_id = 9007199254740991, type = 3, status = "rejected", code = HTML,
      create_time = 9007199254740991, update_time = 9007199254740991 })
  end)

  it("raises bad argument for a record that is not a table", function()
    for _, v in ipairs({ 5, "x", true }) do
      local ok, msg = pcall(validate, v)
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
    end
    local ok, msg = pcall(validate)
    assert.is_false(ok)
    assert.truthy(tostring(msg):find("bad argument #1", 1, true), msg)
  end)

  it("raises bad argument for bad options", function()
    for _, opts in ipairs({ 5, "x", { conversion_protocol = "1" }, { max_code_len = 0 },
      { max_code_len = "10" } }) do
      local ok, msg = pcall(validate, rec(), opts)
      assert.is_false(ok)
      assert.truthy(tostring(msg):find("bad argument #2", 1, true), msg)
    end
  end)
end)

describe("postback.validate create mode", function()
  it("requires offer_id, affiliate_id, type and code", function()
    assert.are.same({ "offer_id:required", "affiliate_id:required", "type:required", "code:required" },
      (problems({})))
    assert.are.same({ "offer_id:required" }, (problems(rec({ offer_id = NIL }))))
    assert.are.same({ "affiliate_id:required" }, (problems(rec({ affiliate_id = NIL }))))
    assert.are.same({ "type:required" }, (problems(rec({ type = NIL }))))
    assert.are.same({ "code:required" }, (problems(rec({ code = NIL }))))
  end)

  it("does not require id, event_id, status or the times", function()
    assert_ok(rec())
    assert_ok(rec({ event_id = 1 }))
  end)

  it("is the default (partial = false/nil)", function()
    assert.are.same({ "offer_id:required", "affiliate_id:required", "type:required", "code:required" },
      (problems({}, { partial = false })))
    assert.are.same({ "offer_id:required", "affiliate_id:required", "type:required", "code:required" },
      (problems({}, {})))
  end)
end)

describe("postback.validate partial mode", function()
  it("checks only the fields present", function()
    assert_ok({}, { partial = true })
    assert_ok({ status = "approved" }, { partial = true })
    assert_ok({ code = URL }, { partial = true })
    assert_ok({ type = 3 }, { partial = true })
    assert.are.same({ "type:range" }, (problems({ type = 5 }, { partial = true })))
    assert.are.same({ "status:invalid_status" }, (problems({ status = "pending" }, { partial = true })))
    assert.are.same({ "code:required" }, (problems({ code = "" }, { partial = true })))
  end)

  it("guesses the code kind from its first byte when type is absent", function()
    assert.are.same({ "code:invalid_url" }, (problems({ code = "t.example/x" }, { partial = true })))
    assert_ok({ code = "<img src=x>" }, { partial = true })
    assert_ok({ code = "<iframe>not a url</iframe>" }, { partial = true })
    -- in create mode too, next to the missing type
    assert.are.same({ "type:required", "code:invalid_url" },
      (problems({ offer_id = 1, affiliate_id = 1, code = "not a url" })))
    assert.are.same({ "type:required" }, (problems({ offer_id = 1, affiliate_id = 1, code = HTML })))
  end)

  it("still applies the conversion_protocol rule to a present type", function()
    assert.are.same({ "type:type_not_allowed" },
      (problems({ type = 3 }, { partial = true, conversion_protocol = 2 })))
    assert.are.same({}, (problems({ type = 3, offer_id = 0 }, { partial = true, conversion_protocol = 2 })))
    assert_ok({ code = URL }, { partial = true, conversion_protocol = 2 })
  end)
end)

describe("postback.validate conversion_protocol rule", function()
  local ALLOWED = { [1] = { [1] = true, [2] = true }, [2] = { [2] = true },
    [3] = { [1] = true, [2] = true, [3] = true } }

  it("enforces the full 3x3 matrix for an offer", function()
    local seen = 0
    for cp = 1, 3 do
      for typ = 1, 3 do
        local r = rec({}, typ)
        local what = "cp " .. cp .. " type " .. typ
        if ALLOWED[cp][typ] then
          assert.are.same({}, (problems(r, { conversion_protocol = cp })), what)
        else
          local p, errs = problems(r, { conversion_protocol = cp })
          assert.are.same({ "type:type_not_allowed" }, p, what)
          assert.truthy(errs[1].message:find("conversion_protocol " .. cp, 1, true), errs[1].message)
          seen = seen + 1
        end
      end
    end
    assert.are.equal(3, seen)
  end)

  it("allows every type for global postbacks (offer_id = 0) under every protocol", function()
    for cp = 1, 3 do
      for typ = 1, 3 do
        assert.are.same({}, (problems(rec({ offer_id = 0 }, typ), { conversion_protocol = cp })),
          "cp " .. cp .. " type " .. typ)
        assert.are.same({}, (problems(rec({ offer_id = 0.0 }, typ), { conversion_protocol = cp })),
          "cp " .. cp .. " type " .. typ .. " (float offer_id)")
      end
    end
  end)

  it("allows every type when no conversion_protocol is given", function()
    for typ = 1, 3 do assert_ok(rec({}, typ)) end
  end)

  it("accepts an integral float protocol", function()
    assert.are.same({ "type:type_not_allowed" }, (problems(rec({}, 1), { conversion_protocol = 2.0 })))
    assert_ok(rec({}, 2), { conversion_protocol = 2.0 })
  end)

  it("applies the rule when offer_id is invalid or absent", function()
    assert.are.same({ "offer_id:range", "type:type_not_allowed" },
      (problems(rec({ offer_id = -1 }, 3), { conversion_protocol = 2 })))
    assert.are.same({ "offer_id:required", "type:type_not_allowed" },
      (problems(rec({ offer_id = NIL }, 3), { conversion_protocol = 2 })))
  end)

  it("reports a bad protocol value as conversion_protocol:range", function()
    local bad = { 0, 4, 1.5, -1, 100, 1e10, 0 / 0, math.huge, -math.huge, 2.5 }
    for _, cp in ipairs(bad) do
      for typ = 1, 3 do
        local p, errs = problems(rec({}, typ), { conversion_protocol = cp })
        assert.are.same({ "conversion_protocol:range" }, p, "cp " .. tostring(cp))
        assert.truthy(errs[1].message:find("conversion_protocol", 1, true))
      end
    end
  end)

  it("names the bad conversion_protocol value in its message", function()
    for _, c in ipairs({ { 4, "got 4" }, { 0, "got 0" }, { 1.5, "got 1.5" }, { -1, "got -1" } }) do
      local _, errs = validate(rec(), { conversion_protocol = c[1] })
      assert.are.equal("conversion_protocol", errs[1].field)
      assert.truthy(errs[1].message:find(c[2], 1, true),
        "cp " .. tostring(c[1]) .. ": " .. errs[1].message)
    end
  end)

  it("does not check the type against a bad protocol", function()
    assert.are.same({ "type:range", "conversion_protocol:range" },
      (problems(rec({ type = 7 }), { conversion_protocol = 9 })))
  end)
end)

describe("postback.validate integer fields", function()
  local BOUNDS = {
    { "id", 1 }, { "offer_id", 0 }, { "affiliate_id", 1 }, { "event_id", 1 },
    { "create_time", 0 }, { "update_time", 0 },
  }
  local MAX = 9007199254740991

  it("checks the lower bound of every field", function()
    for _, b in ipairs(BOUNDS) do
      local name, min = b[1], b[2]
      assert.are.same({}, (problems(rec({ [name] = min }))), name .. " = " .. min)
      assert.are.same({ name .. ":range" }, (problems(rec({ [name] = min - 1 }))), name)
      assert.are.same({ name .. ":range" }, (problems(rec({ [name] = -1000 }))), name)
    end
  end)

  it("checks the upper bound 2^53-1 of every field", function()
    for _, b in ipairs(BOUNDS) do
      local name = b[1]
      assert.are.same({}, (problems(rec({ [name] = MAX }))), name)
      assert.are.same({}, (problems(rec({ [name] = 2 ^ 53 - 1 }))), name .. " (float)")
      assert.are.same({ name .. ":range" }, (problems(rec({ [name] = 2 ^ 53 }))), name .. " (float)")
      if F.has_integers then
        assert.are.same({ name .. ":range" }, (problems(rec({ [name] = MAX + 1 }))), name)
        assert.are.same({ name .. ":range" }, (problems(rec({ [name] = math.maxinteger }))), name)
        assert.are.same({ name .. ":range" }, (problems(rec({ [name] = math.mininteger }))), name)
      end
    end
  end)

  it("names the bound 2^53-1 in its message, for integers and floats", function()
    for _, b in ipairs(BOUNDS) do
      local name, min = b[1], b[2]
      local function message(v)
        local ok, errs = validate(rec({ [name] = v }))
        assert.is_false(ok)
        assert.are.equal(1, #errs)
        assert.are.equal("range", errs[1].code)
        assert.are.equal(name, errs[1].field)
        return errs[1].message
      end
      local head = ("%s must be an integer from %d to 9007199254740991, got "):format(name, min)
      assert.are.equal(head .. "9007199254740992", message(2 ^ 53))
      assert.are.equal(head .. "10000000000000000", message(1e16))
      assert.are.equal(head .. "1e+19", message(1e19)) -- past a 64-bit integer: still range
      assert.are.equal(head .. "-1e+300", message(-1e300))
      assert.are.equal(head .. ("%d"):format(min - 1), message(min - 1))
      if F.has_integers then
        assert.are.equal(head .. "9007199254740992", message(MAX + 1))
        assert.are.equal(head .. "9223372036854775807", message(math.maxinteger))
      end
      -- 15 and 16 digits are fine, as integers and as decoded floats
      assert.are.same({}, (problems(rec({ [name] = 123456789012345 }))), name)
      assert.are.same({}, (problems(rec({ [name] = 1234567890123456.0 }))), name)
    end
  end)

  it("checks type is 1..3", function()
    for typ = 1, 3 do assert_ok(rec({}, typ)) end
    assert.are.same({ "type:range" }, (problems(rec({ type = 0 }))))
    assert.are.same({ "type:range" }, (problems(rec({ type = 4 }))))
    assert.are.same({ "type:range" }, (problems(rec({ type = -2 }))))
  end)

  it("counts integral floats as integers", function()
    assert_ok({ id = 3.0, offer_id = 8.0, affiliate_id = 2.0, event_id = 1.0, type = 2.0,
      code = URL, create_time = 1700000000.0, update_time = 0.0 })
    assert_ok(rec({ offer_id = -0.0 }))
  end)

  it("reports fractions, strings and other types as code \"type\"", function()
    local fields = { "id", "offer_id", "affiliate_id", "event_id", "type", "create_time", "update_time" }
    for _, name in ipairs(fields) do
      for _, v in ipairs({ 1.5, "5", "", true, {}, print, 0 / 0, math.huge }) do
        assert.are.same({ name .. ":type" }, (problems(rec({ [name] = v }))),
          name .. " = " .. tostring(v))
      end
    end
  end)
end)

describe("postback.validate status", function()
  it("accepts approved and rejected", function()
    assert_ok(rec({ status = "approved" }))
    assert_ok(rec({ status = "rejected" }))
  end)

  it("reports pending and anything else as invalid_status", function()
    for _, s in ipairs({ "pending", "APPROVED", "Approved", "approved ", " rejected", "", "approve",
      "approved\0" }) do
      assert.are.same({ "status:invalid_status" }, (problems(rec({ status = s }))), F.show(s))
    end
  end)

  it("reports a non-string status as type", function()
    for _, s in ipairs({ 1, true, {}, 2.5 }) do
      assert.are.same({ "status:type" }, (problems(rec({ status = s }))), tostring(s))
    end
  end)
end)

describe("postback.validate code", function()
  it("reports an empty or whitespace-only code as required", function()
    for _, c in ipairs({ "", " ", "\t\r\n", "   \n  " }) do
      for typ = 1, 3 do
        assert.are.same({ "code:required" }, (problems(rec({ code = c }, typ))), F.show(c))
      end
    end
  end)

  it("reports a non-string code as type", function()
    for _, c in ipairs({ 5, true, {}, print }) do
      assert.are.same({ "code:type" }, (problems(rec({ code = c }))), tostring(c))
    end
  end)

  it("reports a code longer than max_code_len (default 4096) as too_long", function()
    local base = "https://t.example/?x="
    local at = base .. string.rep("a", 4096 - #base)
    assert.are.equal(4096, #at)
    assert_ok(rec({ code = at }))
    assert.are.same({ "code:too_long" }, (problems(rec({ code = at .. "a" }))))
    assert.are.same({ "code:too_long" }, (problems(rec({ code = "<" .. string.rep("b", 5000) .. ">" }, 3))))
    assert.are.same({ "code:too_long" }, (problems(rec({ code = URL }), { max_code_len = 10 })))
    assert_ok(rec({ code = "https://a.b" }), { max_code_len = 11 })
    assert.are.same({ "code:too_long" }, (problems(rec({ code = "https://a.b" }), { max_code_len = 10 })))
    assert_ok(rec({ code = at .. "a" }), { max_code_len = 5000 })
  end)

  it("accepts absolute http and https URLs for types 1 and 2", function()
    local good = {
      "http://a.example/", "https://a.example", "HTTPS://A.EXAMPLE/X", "HtTp://h/p", "hTTpS://h",
      "https://t.example/p?c={click_id}&o={offer_id}", "https://{aff_sub1}.example/x",
      "https://%7Baff_sub1%7D.example/", "https://h.example:8080/p", "https://h:{aff_sub2}/",
      "http://[::1]:8080/x", "https://h.example?x=1",
      "https://h.example#frag", "http://127.0.0.1/x",
      "https://b" .. string.char(195, 188) .. "cher.example/",
    }
    for _, u in ipairs(good) do
      for typ = 1, 2 do
        assert.are.same({}, (problems(rec({ code = u }, typ))), u)
      end
    end
  end)

  it("reports anything else as invalid_url for types 1 and 2", function()
    local bad = {
      "t.example/x", "ftp://h/x", "//h/x", "http://", "https://", "http:///path", "https://?x",
      "https://#f", "https://user@/x", "https://h .example/", "https://h/ x", "https://h/\tx",
      "https://h/x\n", "https://h/x\r", "https://h/\0", "https://h/" .. string.char(127),
      " https://h/", "javascript:alert(1)", "http://h:abc/", "http://h:0/", "http://h:65536/",
      "http://[zz]/", "http://h^x/", "http:/h/x", "mailto:a@b", HTML, "{click_id}",
      "https://h/" .. string.char(1),
    }
    for _, u in ipairs(bad) do
      for typ = 1, 2 do
        assert.are.same({ "code:invalid_url" }, (problems(rec({ code = u }, typ))), F.show(u))
      end
    end
  end)

  it("refuses user info unless allow_userinfo, which accepts it", function()
    for _, u in ipairs { "https://user:pw@h.example/", "https://user@h.example/", "https://@h.example/",
                         "https://{aff_sub1}:{aff_sub2}@h.example/" } do
      local p, errs = problems(rec({ code = u }))
      assert.are.same({ "code:invalid_url" }, p, u)
      assert.are.equal("code has user info (user:password@), refused unless allowed", errs[1].message)
      assert_ok(rec({ code = u }), { allow_userinfo = true })
    end
    assert.are.same({ "code:invalid_url" }, (problems(rec({ code = "https://a@b@h.example/" }), { allow_userinfo = true })))
  end)

  it("refuses percent signs in a host, except a whole %7Bmacro%7D", function()
    for _, u in ipairs { "http://ex%00ample.com/", "http://good.com%2fevil/", "http://ex%61mple.com/",
                         "http://%7Baff_sub1/", "http://h%/" } do
      local p, errs = problems(rec({ code = u }))
      assert.are.same({ "code:invalid_url" }, p, u)
      assert.truthy(errs[1].message:find("host", 1, true), errs[1].message)
    end
    assert_ok(rec({ code = "http://%7Baff_sub1%7D.example/x?c=%7Bclick_id%7D" }))
    assert_ok(rec({ code = "http://h.example/%2e%2e/%7Bnot_a_host%7D" }), { allow_unknown_macros = true })
  end)

  -- Hosts that are valid IDNs, and hosts that are not (not UTF-8, a
  -- fullwidth solidus).
  local IDN_OK = { "https://m\195\188nchen.example/?c={click_id}", "https://{aff_sub1}.m\195\188nchen.example/" }
  local IDN_BAD = { "https://\255.example/", "https://good.example\239\188\143evil/",
                    "https://{aff_sub1}.\255.example/" }

  it("accepts internationalised hosts that are valid IDNs", function()
    for _, u in ipairs(IDN_OK) do assert_ok(rec({ code = u })) end
    for _, u in ipairs(IDN_BAD) do
      local p, errs = problems(rec({ code = u }))
      assert.are.same({ "code:invalid_url" }, p, F.show(u))
      assert.truthy(errs[1].message:find("internationalised", 1, true), errs[1].message)
    end
  end)

  -- A locale whose decimal point is a comma: an installed one (`locale -a`,
  -- and the locales in $LOCPATH), else one localedef builds into a scratch
  -- LOCPATH (Latin-1, a codeset that is not UTF-8). Returns its name and the
  -- LOCPATH it needs (nil for an installed one), or nil.
  local function comma_locale()
    local names = {}
    local p = io.popen("locale -a 2>/dev/null; ls \"$LOCPATH\" 2>/dev/null")
    for name in p:lines() do names[#names + 1] = name end
    p:close()
    local function comma(name, locpath)
      local env = locpath and ("LOCPATH=" .. child.quote(locpath) .. " ") or ""
      p = io.popen(("%sLC_ALL=%s locale decimal_point 2>/dev/null"):format(env, child.quote(name)))
      local point = p:read("*l")
      p:close()
      return point == ","
    end
    for _, name in ipairs(names) do
      if name:match("^[%w_.@-]+$") and name ~= "C" and name ~= "POSIX" and comma(name) then return name end
    end
    local dir = F.tmpdir()
    local name = "de_DE.ISO-8859-1"
    os.execute(("localedef -i de_DE -f ISO-8859-1 %s >/dev/null 2>&1"):format(child.quote(dir .. "/" .. name)))
    if comma(name, dir) then return name, dir end
  end

  it("accepts and refuses the same internationalised hosts whatever the locale (a comma-decimal one)", function()
    local loc, locpath = comma_locale()
    if not loc then return pending("no locale with a decimal comma is installed, and localedef cannot build one") end
    local list = {}
    for _, u in ipairs(IDN_OK) do list[#list + 1] = ("%q"):format(u) end
    for _, u in ipairs(IDN_BAD) do list[#list + 1] = ("%q"):format(u) end
    -- the child takes the locale of its environment, as a program that
    -- calls setlocale(LC_ALL, "") does
    local r = child.run(([[
      local loc = os.setlocale("")
      local validate = require("postback").validate
      local out = {}
      for i, u in ipairs { %s } do
        local ok, errs = validate { offer_id = 5, affiliate_id = 7, type = 2, code = u }
        local e = errs and errs[1] or {}
        out[i] = { ok = ok, n = errs and #errs or 0, field = e.field, code = e.code, message = e.message }
      end
      return { locale = loc, numeric = os.setlocale(nil, "numeric"), results = out }
    ]]):format(table.concat(list, ", ")), { wrap = function(cmd)
      local env = locpath and ("LOCPATH=" .. child.quote(locpath) .. " ") or ""
      return ("env %sLC_ALL=%s LC_NUMERIC=%s %s"):format(env, child.quote(loc), child.quote(loc), cmd)
    end })
    if locpath then os.execute("rm -rf " .. child.quote(locpath)) end
    assert(r.value, child.describe(r))
    assert.equal(loc, r.value.locale) -- in force
    assert.equal(loc, r.value.numeric)
    for i, u in ipairs(IDN_OK) do
      assert.are.same({ ok = true, n = 0 }, r.value.results[i], F.show(u))
    end
    for i, u in ipairs(IDN_BAD) do
      local got = r.value.results[#IDN_OK + i]
      assert.are.same({ false, 1, "code", "invalid_url" }, { got.ok, got.n, got.field, got.code }, F.show(u))
      assert.truthy(got.message:find("internationalised", 1, true), got.message)
    end
  end)

  it("accepts any non-empty snippet for type 3", function()
    for _, c in ipairs({ HTML, "<iframe src='https://t.example/{click_id}'></iframe>",
      "not a url at all", "https://h/ x", "<script>var a = 1;</script>" }) do
      assert.are.same({}, (problems(rec({ code = c }, 3))), c)
    end
  end)

  it("reports undocumented macros as unknown_macro with a suggestion", function()
    local p, errs = problems(rec({ code = "https://t.example/?c={clickid}" }))
    assert.are.same({ "code:unknown_macro" }, p)
    assert.are.equal("clickid", errs[1].macro)
    assert.truthy(errs[1].message:find("did you mean {click_id}", 1, true), errs[1].message)
    local cases = {
      { "refferer", "referer" }, { "accept_lang", "accept_lan" }, { "Click_ID", "click_id" },
      { "affsub1", "aff_sub1" }, { "payot", "payout" }, { "CURRENCY", "currency" },
    }
    for _, c in ipairs(cases) do
      _, errs = problems(rec({ code = "https://t.example/?x={" .. c[1] .. "}" }))
      assert.are.equal(c[1], errs[1].macro)
      assert.truthy(errs[1].message:find("did you mean {" .. c[2] .. "}", 1, true), errs[1].message)
    end
  end)

  it("gives no suggestion when no documented name is close", function()
    local _, errs = problems(rec({ code = "https://t.example/?x={zzzzzzzzzz}" }))
    assert.are.equal("unknown_macro", errs[1].code)
    assert.are.equal("zzzzzzzzzz", errs[1].macro)
    assert.falsy(errs[1].message:find("did you mean", 1, true), errs[1].message)
    assert.truthy(errs[1].message:find("zzzzzzzzzz", 1, true), errs[1].message)
  end)

  it("reports each undocumented name once, in order of first use, in every form", function()
    local p, errs = problems(rec({ code = "https://t.example/?a={foo}&b=%7Bbar%7D&c={foo}&d=%7bbaz%7d&e={click_id}" }))
    assert.are.same({ "code:unknown_macro", "code:unknown_macro", "code:unknown_macro" }, p)
    assert.are.equal("foo", errs[1].macro)
    assert.are.equal("bar", errs[2].macro)
    assert.are.equal("baz", errs[3].macro)
  end)

  it("checks macros in HTML snippets and in hosts", function()
    local p, errs = problems(rec({ code = '<img src="https://t.example/{clickid}">' }, 3))
    assert.are.same({ "code:unknown_macro" }, p)
    assert.are.equal("clickid", errs[1].macro)
    p = problems(rec({ code = "https://{affsub1}.example/x" }))
    assert.are.same({ "code:unknown_macro" }, p)
  end)

  it("reports the full name of a long unknown macro in the macro field", function()
    local name = string.rep("q", 100)
    local _, errs = problems(rec({ code = "https://t.example/?x={" .. name .. "}" }))
    assert.are.equal("unknown_macro", errs[1].code)
    assert.are.equal(name, errs[1].macro)
  end)

  it("accepts every documented macro and brace text that is not a macro", function()
    local parts = {}
    for i, name in ipairs(F.MACROS) do parts[i] = name .. "={" .. name .. "}" end
    assert_ok(rec({ code = "https://t.example/p?" .. table.concat(parts, "&") }))
    assert_ok(rec({ code = "https://t.example/p?a={}&b={a-b}&c={x.y}&d={{click_id}}&e={click_id%7D" }))
    assert_ok(rec({ code = "<img src='https://t.example/p?c={ x }'>" }, 3))
  end)

  it("allows undocumented macros with allow_unknown_macros = true", function()
    assert_ok(rec({ code = "https://t.example/?c={clickid}&x={whatever}" }), { allow_unknown_macros = true })
    assert.are.same({ "code:invalid_url" },
      (problems(rec({ code = "t.example/{whatever}" }), { allow_unknown_macros = true })))
  end)

  it("reports invalid_url before unknown_macro", function()
    assert.are.same({ "code:invalid_url", "code:unknown_macro" },
      (problems(rec({ code = "ftp://t.example/{clickid}" }))))
  end)
end)

describe("postback.validate unknown fields", function()
  it("reports keys that are not postback fields", function()
    local p, errs = problems(rec({ foo = 1 }))
    assert.are.same({ "foo:unknown_field" }, p)
    assert.truthy(errs[1].message:find("foo", 1, true))
    assert.are.same({ "conversion_protocol:unknown_field" },
      (problems(rec({ conversion_protocol = 2 }))))
    assert.are.same({ "Type:unknown_field" }, (problems(rec({ Type = 2 }))))
  end)

  it("suggests the field meant, as for macros", function()
    local cases = {
      affilate_id = "affilate_id is not a postback field (did you mean affiliate_id?)",
      ofer_id = "ofer_id is not a postback field (did you mean offer_id?)",
      Type = "Type is not a postback field (did you mean type?)",
      EVENT_ID = "EVENT_ID is not a postback field (did you mean event_id?)",
      stauts = "stauts is not a postback field (did you mean status?)",
      creat_time = "creat_time is not a postback field (did you mean create_time?)",
      foo = "foo is not a postback field",
      conversion_protocol = "conversion_protocol is not a postback field",
    }
    for key, message in pairs(cases) do
      local ok, errs = validate(rec({ [key] = 1 }))
      assert.is_false(ok)
      assert.are.same({ field = key, code = "unknown_field", message = message }, errs[1])
    end
    -- the same function as the macros use
    local _, errs = validate(rec({ code = "https://t.example/p?c={clik_id}" }))
    assert.are.equal("code uses {clik_id}, which is not a documented macro (did you mean {click_id}?)",
      errs[1].message)
  end)

  it("names non-string keys like [5]", function()
    local r = rec()
    r[5] = "x"
    assert.are.same({ "[5]:unknown_field" }, (problems(r)))
    r = rec()
    r[1] = "a"
    r[2] = "b"
    assert.are.same({ "[1]:unknown_field", "[2]:unknown_field" }, (problems(r)))
    r = rec()
    r[true] = 1
    local _, errs = problems(r)
    assert.are.equal("unknown_field", errs[1].code)
    assert.truthy(errs[1].field:find("^%[.+%]$"), errs[1].field)
  end)

  it("lists unknown fields sorted by name, after the known ones", function()
    local r = rec({ zeta = 1, alpha = 2, Mid = 3, type = 9 })
    r[5] = 0
    assert.are.same({ "type:range", "Mid:unknown_field", "[5]:unknown_field", "alpha:unknown_field",
      "zeta:unknown_field" }, (problems(r)))
  end)
end)

describe("postback.validate collects every problem in a fixed order", function()
  it("orders id, offer_id, affiliate_id, event_id, type, protocol, status, code, times, unknown", function()
    local r = { id = 0, offer_id = -1, affiliate_id = 0, event_id = 0, type = 9, status = "pending",
      code = "ftp://x/{clickid}", create_time = -1, update_time = -1, zeta = 1, alpha = 2 }
    r[5] = 3
    assert.are.same({
      "id:range", "offer_id:range", "affiliate_id:range", "event_id:range", "type:range",
      "conversion_protocol:range", "status:invalid_status", "code:invalid_url", "code:unknown_macro",
      "create_time:range", "update_time:range", "[5]:unknown_field", "alpha:unknown_field",
      "zeta:unknown_field",
    }, (problems(r, { conversion_protocol = 7 })))
  end)

  it("puts type_not_allowed right after type, before status and code", function()
    local r = { id = "1", offer_id = 4, affiliate_id = 1.5, event_id = {}, type = 3, status = 1,
      code = "<img src={x}>", create_time = "0", update_time = true, extra = 1 }
    assert.are.same({
      "id:type", "affiliate_id:type", "event_id:type", "type:type_not_allowed", "status:type",
      "code:unknown_macro", "create_time:type", "update_time:type", "extra:unknown_field",
    }, (problems(r, { conversion_protocol = 1 })))
  end)

  it("reports many unknown fields and macros without losing any", function()
    local r = rec()
    local parts = {}
    for i = 1, 40 do
      r["f" .. string.format("%02d", i)] = i
      parts[i] = "{u" .. string.format("%02d", i) .. "}"
    end
    r.code = "https://t.example/?" .. table.concat(parts)
    local p, errs = problems(r)
    assert.are.equal(80, #p)
    for i = 1, 40 do
      assert.are.equal("code:unknown_macro", p[i])
      assert.are.equal("u" .. string.format("%02d", i), errs[i].macro)
      assert.are.equal("f" .. string.format("%02d", i) .. ":unknown_field", p[40 + i])
    end
  end)
end)

describe("postback.allowed_types", function()
  it("maps each conversion_protocol to its types", function()
    assert.are.same({ 1, 2 }, postback.allowed_types(1))
    assert.are.same({ 2 }, postback.allowed_types(2))
    assert.are.same({ 1, 2, 3 }, postback.allowed_types(3))
    assert.are.same({ 2 }, postback.allowed_types(2.0))
  end)

  it("returns nil, err for bad protocols", function()
    for _, cp in ipairs({ 0, 4, -1, 1.5, "1", true, {}, 0 / 0, math.huge }) do
      local types, err = postback.allowed_types(cp)
      assert.is_nil(types, tostring(cp))
      assert.are.equal("table", type(err))
      assert.are.equal("validation", err.kind)
      assert.are.equal(postback.Error, getmetatable(err))
      assert.are.equal("string", type(tostring(err)))
    end
    local types, err = postback.allowed_types(nil)
    assert.is_nil(types)
    assert.are.equal("validation", err.kind)
    types, err = postback.allowed_types()
    assert.is_nil(types)
    assert.are.equal("validation", err.kind)
  end)

  it("agrees with validate for every protocol and type", function()
    for cp = 1, 3 do
      local allowed = {}
      for _, t in ipairs(postback.allowed_types(cp)) do allowed[t] = true end
      for typ = 1, 3 do
        local ok = validate(rec({}, typ), { conversion_protocol = cp })
        assert.are.equal(allowed[typ] == true, ok, "cp " .. cp .. " type " .. typ)
      end
    end
  end)
end)
