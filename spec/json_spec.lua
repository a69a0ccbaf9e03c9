-- postback.json: the exact encoder (core.json_encode) checked against
-- lua-cjson's decoder, on every interpreter the suite runs on.
local json = require "postback.json"
local testenv = require "testenv"
local cjson = require("cjson.safe").new()
cjson.decode_max_depth(100)

local encode = json.encode
local has_integers = math.type ~= nil
local N = testenv.slow and 2000 or 20000 -- random cases (fewer under valgrind)

-- Encodes, decodes with cjson, and returns text, value.
local function round(v)
  local text, err = encode(v)
  assert.is_string(text, err)
  return text, cjson.decode(text)
end

-- 8 random bytes (5.3+), read as format f ("<i8", "<d").
local function random_bits(f)
  return (string.unpack(f, string.pack("<I4I4", math.random(0, 0xffffffff), math.random(0, 0xffffffff))))
end

-- A random integer of magnitude below 2^53, as a number of this Lua.
local function random_exact()
  local hi, lo = math.random(0, 2 ^ 26 - 1), math.random(0, 2 ^ 27 - 1)
  local x = hi * 2 ^ 27 + lo
  if has_integers then x = math.tointeger(x) end
  if math.random() < 0.5 then x = -x end
  return x
end

describe("postback.json.encode", function()
  describe("integers", function()
    it("writes 15- and 16-digit integers and 2^53-1 in plain digits", function()
      for _, case in ipairs {
        { 123456789012345, "123456789012345" },
        { 1234567890123456, "1234567890123456" },
        { 9007199254740991, "9007199254740991" },
        { -9007199254740991, "-9007199254740991" },
        { 2 ^ 53, "9007199254740992" },
        { 0, "0" }, { 8, "8" }, { -1, "-1" },
      } do
        assert.are.equal(case[2], encode(case[1]))
        assert.are.equal('{"affiliate_id":' .. case[2] .. "}", encode { affiliate_id = case[1] })
      end
    end)

    it("writes integral floats up to 2^53 as integers (decoded JSON gives 8.0)", function()
      assert.are.equal("8", encode(8.0))
      assert.are.equal("123456789012345", encode(123456789012345.0))
      assert.are.equal("9007199254740991", encode(cjson.decode("9007199254740991")))
      assert.are.equal("-9007199254740992", encode(-2 ^ 53))
      assert.are.equal("0", encode(-0.0))
    end)

    it("round-trips random integers below 2^53 exactly, never in exponent form", function()
      math.randomseed(5301)
      for _ = 1, N do
        local x = random_exact()
        local text, back = round(x)
        assert.are.equal(("%.0f"):format(x), text)
        assert.are.equal(x, back)
      end
    end)

    it("writes every Lua integer in its digits (5.3+)", function()
      if not has_integers then
        pending("no integer subtype on " .. _VERSION)
        return
      end
      math.randomseed(5302)
      assert.are.equal("9223372036854775807", encode(math.maxinteger))
      assert.are.equal("-9223372036854775808", encode(math.mininteger))
      for _ = 1, N do
        local x = random_bits("<i8")
        assert.are.equal(("%d"):format(x), encode(x))
      end
    end)
  end)

  describe("floats", function()
    it("writes the shortest form that reads back the same", function()
      assert.are.equal("0.1", encode(0.1))
      assert.are.equal("0.30000000000000004", encode(0.1 + 0.2))
      assert.are.equal("0.3333333333333333", encode(1 / 3))
      assert.are.equal("-2.5", encode(-2.5))
      assert.are.equal("1e+300", encode(1e300))
      assert.are.equal("1e-07", encode(1e-7))
      assert.are.equal("123456789012345.5", encode(123456789012345.5))
    end)

    it("round-trips random floats exactly", function()
      math.randomseed(5303)
      for i = 1, N do
        local x = (math.random() - 0.5) * 10 ^ math.random(-300, 300)
        if i % 3 == 0 then x = random_exact() + math.random() end
        local text, back = round(x)
        assert.are.equal(x, back, text)
        assert.is_nil(text:find("[^%d%.eE+-]"), text)
      end
    end)

    it("round-trips random bit patterns (5.3+)", function()
      if not string.pack then
        pending("no string.pack on " .. _VERSION)
        return
      end
      math.randomseed(5304)
      local n = 0
      while n < N do
        local x = random_bits("<d")
        if x == x and x ~= math.huge and x ~= -math.huge then
          local text, back = round(x)
          assert.are.equal(x, back, text)
          n = n + 1
        end
      end
    end)

    it("refuses NaN and infinities, naming where they are", function()
      local text, err = encode(0 / 0)
      assert.is_nil(text)
      assert.are.equal("cannot encode NaN", err)
      text, err = encode { values = { payout = math.huge } }
      assert.is_nil(text)
      assert.are.equal("cannot encode an infinite number at values.payout", err)
      text, err = encode { 1, 2, { -math.huge } }
      assert.is_nil(text)
      assert.are.equal("cannot encode an infinite number at [3][1]", err)
    end)
  end)

  describe("strings", function()
    it("escapes quotes, backslashes and control bytes, keeps UTF-8 and '/'", function()
      assert.are.equal([["a\"b\\c"]], encode('a"b\\c'))
      assert.are.equal([["\b\f\n\r\t\u0000\u001f\u007f"]], encode("\b\f\n\r\t\0\31\127"))
      assert.are.equal('"café €/😀"', encode("café €/😀"))
      assert.are.equal('"https://t.example/p?c={click_id}&x=1"', encode("https://t.example/p?c={click_id}&x=1"))
    end)

    it("round-trips every byte 0-255, alone and together", function()
      local all = {}
      for b = 0, 255 do
        local s = string.char(b)
        local _, back = round(s)
        assert.are.equal(s, back, "byte " .. b)
        all[#all + 1] = s
      end
      local s = table.concat(all)
      local _, back = round(s)
      assert.are.equal(s, back)
      _, back = round { [s] = s }
      assert.are.equal(s, back[s])
    end)

    it("round-trips random byte strings", function()
      math.randomseed(5305)
      for _ = 1, N / 10 do
        local t = {}
        for i = 1, math.random(0, 64) do t[i] = string.char(math.random(0, 255)) end
        local s = table.concat(t)
        local _, back = round { s }
        assert.are.equal(s, back[1])
      end
    end)
  end)

  describe("tables", function()
    it("makes arrays and objects as lua-cjson does", function()
      assert.are.equal("[1,2,3]", encode { 1, 2, 3 })
      assert.are.equal("{}", encode {})
      assert.are.equal('{"a":{}}', encode { a = {} })
      assert.are.equal("[1,null,3]", encode { 1, nil, 3 })
      assert.are.equal("[null,null,3]", encode { [3] = 3 })
      assert.are.equal('{"a":null}', encode { a = json.null })
      assert.are.equal("[true,false]", encode { true, false })
      local mixed = cjson.decode(encode { 10, 20, x = "y" })
      assert.are.same({ ["1"] = 10, ["2"] = 20, x = "y" }, mixed)
      assert.are.same({ ["1.5"] = 1, ["-1"] = 2 }, cjson.decode(encode { [1.5] = 1, [-1] = 2 }))
      assert.are.equal("null", encode(nil))
      assert.are.equal('"x"', encode("x"))
      assert.are.equal("true", encode(true))
    end)

    it("round-trips a page of postbacks", function()
      local rows = {}
      for i = 1, 200 do
        rows[i] = { id = 9007199254740991 - i, offer_id = i % 31, affiliate_id = 123456789012345 + i,
                    event_id = 1234567890123456 + i, type = 2, status = "approved",
                    code = "https://t.example/p?c={click_id}&n=" .. i, create_time = 1700000000 + i }
      end
      local _, back = round { rowset = rows, totalRows = 200 }
      assert.are.equal(200, #back.rowset)
      for i, r in ipairs(back.rowset) do
        json.postback(r)
        for k, v in pairs(rows[i]) do assert.are.equal(v, r[k], k) end
        if has_integers then assert.are.equal("integer", math.type(r.affiliate_id)) end
      end
    end)

    it("refuses an excessively sparse array, as lua-cjson is told to", function()
      local text, err = encode { [1] = 1, [1000] = 2 }
      assert.is_nil(text)
      assert.are.equal("cannot encode an excessively sparse array", err)
    end)

    it("writes 64 levels of nesting and refuses 65 (and cycles)", function()
      local function nest(n)
        local t = {}
        for _ = 2, n do t = { t } end
        return t
      end
      local text = assert(encode(nest(64)))
      assert.are.equal(("["):rep(63) .. "{}" .. ("]"):rep(63), text)
      assert.is_table(cjson.decode(text))
      local err
      text, err = encode(nest(65))
      assert.is_nil(text)
      assert.matches("nested deeper than 64", err)
      local cycle = {}
      cycle.self = cycle
      text, err = encode(cycle)
      assert.is_nil(text)
      assert.matches("^cannot encode tables nested deeper than 64 %(a cycle%?%) at self%.self%.self", err)
    end)

    it("refuses functions, userdata, threads and odd keys with a clear error", function()
      local cases = {
        { { values = { cb = print } }, "cannot encode a function at values.cb" },
        { { headers = { io.stdout } }, "cannot encode a userdata at headers[1]" },
        { { co = coroutine.create(function() end) }, "cannot encode a thread at co" },
        { { ["a key"] = { f = print } }, 'cannot encode a function at ["a key"].f' },
        { { [true] = 1 }, "cannot encode a table key of type boolean" },
        { { x = { [{}] = 1 } }, "cannot encode a table key of type table at x" },
        { print, "cannot encode a function" },
      }
      for _, case in ipairs(cases) do
        local text, err = encode(case[1])
        assert.is_nil(text)
        assert.are.equal(case[2], err)
      end
      local ok, err = pcall(encode)
      assert.is_false(ok)
      assert.matches("bad argument #1", err)
    end)

    it("gives the same text after an error (the buffer is reused)", function()
      assert.is_nil((encode { a = { b = print } }))
      assert.are.equal('{"a":1}', encode { a = 1 })
      local big = ("x"):rep(200000)
      assert.are.equal(200002, #encode(big))
      assert.are.equal("[1]", encode { 1 })
    end)
  end)
end)
