-- c:each bounds what it believes. The hostile server's /list/VARIANT
-- answers every page full (`limit` rows with fresh ids, at any offset or id
-- filter) and says totalRows = 5, while totalPages is:
--   null, -1, 2.5, "3"   not a positive integer: a decode error, raised by
--                        the iterator as an error table (kind "decode"),
--                        never a raw Lua error string;
--   1000000              far above totalRows / limit + 1: ignored, so with
--                        limit 2 the iteration reads at most 4 pages (5 to 8
--                        rows) and ends without error;
--   1e309                (infinite) either a decode error or the same bound.
-- A rowset that is not an array is a decode error for c:list and c:each.
-- migrate, which pages with each, ends too.
--
-- Each case runs in a child process under a hard limit: an iteration that
-- never ends fails its test instead of hanging the suite.
local child = require "child"
local hostile = require "hostile"

local EACH = [[
local base, sort = ...
local postback = require "postback"
local c = assert(postback.client { network = "pages", api_key = "pages-key", base_url = base,
  timeout = 5, retries = 0 })
local q = { limit = 2 }
if sort ~= "" then q.sort = sort end
local n = 0
local ok, err = pcall(function()
  for _ in c:each(q) do
    n = n + 1
    if n >= 1000 then error("runaway: 1000 rows", 0) end
  end
end)
return { n = n, ok = ok, err = err, err_type = type(err) }
]]

describe("reliability: c:each bounds what it believes", function()
  local server

  setup(function() server = hostile.start() end)
  teardown(function() if server then server:stop() end end)
  before_each(function() server:reset() end)

  local function each(variant, sort)
    local r = child.run(EACH, { args = { server.url .. "/list/" .. variant, sort or "" }, limit = 10 })
    assert(not r.timed_out, "the iteration never ended (killed after 10 s)")
    assert(r.raised == nil, "the child failed: " .. tostring(r.raised))
    return r.value, server:count("/list/" .. variant .. "/v1/affiliate_postbacks")
  end

  local function assert_decode_error(v)
    assert(not v.ok, ("the iteration ended without error after %d rows"):format(v.n))
    assert(v.err_type == "table", "raised a raw " .. v.err_type .. ": " .. tostring(v.err))
    assert(v.err.kind == "decode", ("raised a %s error: %s"):format(tostring(v.err.kind), tostring(v.err.text)))
  end

  local function assert_bounded(v, pages)
    assert(v.ok, "raised: " .. tostring(type(v.err) == "table" and v.err.text or v.err))
    assert(v.n >= 5 and v.n <= 8, ("read %d rows, expected 5 to 8 (totalRows 5, limit 2)"):format(v.n))
    assert(pages <= 4, ("read %d pages, at most 4 expected"):format(pages))
  end

  for _, sort in ipairs { "", "-id" } do
    local how = sort == "" and "" or (" (sort " .. sort .. ")")
    for _, variant in ipairs { "null", "neg", "frac", "string" } do
      it(("totalPages %s%s is a decode error raised as an error table"):format(variant, how), function()
        assert_decode_error((each(variant, sort)))
      end)
    end

    it("totalPages 1000000 with totalRows 5 reads at most totalRows / limit + 1 pages" .. how, function()
      assert_bounded(each("huge", sort))
    end)

    it("totalPages 1e309 ends: a decode error, or at most totalRows / limit + 1 pages" .. how, function()
      local v, pages = each("inf", sort)
      if v.ok then
        assert_bounded(v, pages)
      else
        assert_decode_error(v)
      end
    end)
  end

  for _, variant in ipairs { "rowset-object", "rowset-string" } do
    it("a " .. variant:gsub("rowset%-", "rowset that is a JSON ") .. " is a decode error for c:list and c:each", function()
      local r = child.run([[
        local postback = require "postback"
        local c = assert(postback.client { network = "pages", api_key = "pages-key", base_url = ..., timeout = 5, retries = 0 })
        local data, err = c:list { limit = 2 }
        return { listed = data ~= nil, err = err }
      ]], { args = { server.url .. "/list/" .. variant }, limit = 10 })
      assert(not r.timed_out and r.raised == nil, child.describe(r))
      assert(not r.value.listed, "c:list returned the answer as data")
      assert.equal("decode", r.value.err and r.value.err.kind)
      assert_decode_error((each(variant)))
    end)
  end

  it("migrate over a list that says totalPages 1000000 ends", function()
    local r = child.run([[
      local postback = require "postback"
      local c = assert(postback.client { network = "pages", api_key = "pages-key", base_url = ..., timeout = 5, retries = 0 })
      local seen = 0
      local ok, report, err = pcall(postback.migrate, {
        client = c, dry_run = true, query = { limit = 2 },
        out = { write = function() end },
        transform = function()
          seen = seen + 1
          if seen >= 1000 then error("runaway: 1000 records", 0) end
          return nil
        end,
      })
      return { ok = ok, report = report, err = err, seen = seen }
    ]], { args = { server.url .. "/list/huge" }, limit = 10 })
    assert(not r.timed_out, "migrate never ended (killed after 10 s)")
    assert(r.raised == nil, child.describe(r))
    assert(r.value.ok, "migrate raised: " .. tostring(r.value.report))
    assert(r.value.seen >= 5 and r.value.seen <= 8, ("migrate read %d records, expected 5 to 8"):format(r.value.seen))
  end)
end)
