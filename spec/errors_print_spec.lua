-- Every error the library returns prints: tostring(err) never raises and
-- gives one line (no CR, LF or NUL), starting with its kind. The spec walks
-- every error-producing path: validation (validate, client options, records,
-- ids, list queries, updates), rendering, fire, fire_many items, the
-- dispatcher, transport failures, timeouts, HTTP, API and decode errors,
-- spools, migrate, batch; then `postback fire 'ftp://x/'` on the command
-- line. Input that carries CR or LF (a URL, an id, a field name, a server's
-- message) must not make an error span lines either.
-- Also: fire_many items of the documented {url=, values=, headers=} shape
-- work, and their headers reach the receiver.
local postback = require "postback"
local mockproc = require "mockproc"
local F = require "fixtures"
local spool = require "postback.spool"
local testenv = require "testenv"

local LOCAL = { allow_private = true } -- the mock's receiver is on loopback

local function visible(s)
  return (tostring(s):gsub("\r", "\\r"):gsub("\n", "\\n"):gsub("%z", "\\0"))
end

-- What is wrong with how err prints (nil when nothing is).
local function problem(err)
  if err == nil then return "no error was returned" end
  if getmetatable(err) ~= postback.Error then
    return "not an error table (" .. type(err) .. "): " .. visible(err)
  end
  local ok, s = pcall(tostring, err)
  if not ok then return "tostring raised: " .. visible(s) end
  if type(s) ~= "string" then return "tostring gave a " .. type(s) end
  if s:find("[\r\n%z]") then return "more than one line: " .. visible(s) end
  if not s:find("^" .. tostring(err.kind) .. " error") then return "does not start with its kind: " .. s end
  return nil
end

-- A list of cases: add(what, err) or add(what, nil, err) (a call's returns);
-- check() asserts that every one prints, naming each that does not.
local function cases()
  local list = {}
  local self = {}
  function self.add(what, value, err)
    if err == nil and getmetatable(value) == postback.Error then err = value end
    list[#list + 1] = { what = what, err = err, value = value }
  end
  -- a call that must raise an error table (iterators do)
  function self.raises(what, fn, ...)
    local ok, err = pcall(fn, ...)
    if ok then
      list[#list + 1] = { what = what, err = nil }
    else
      list[#list + 1] = { what = what, err = err }
    end
  end
  -- a function that returns nil, err: raising instead is a problem too
  function self.call(what, fn, ...)
    local ok, value, err = pcall(fn, ...)
    if ok then
      self.add(what, value, err)
    else
      list[#list + 1] = { what = what, raised = value }
    end
  end
  function self.check()
    local bad = {}
    for _, c in ipairs(list) do
      local p
      if c.raised ~= nil then
        p = "raised instead of returning nil, err: " .. visible(c.raised)
      else
        p = problem(c.err)
      end
      if p then bad[#bad + 1] = c.what .. ": " .. p end
    end
    assert(#bad == 0, ("%d of %d errors do not print as one line:\n  %s"):format(
      #bad, #list, table.concat(bad, "\n  ")))
    return #list
  end
  return self
end

-- A loopback port where nothing listens.
local closed_port = require("nginxproc").free_port

describe("every error prints as one line", function()
  local mock, c, tmp

  setup(function()
    mock = mockproc.start { network = "err", api_key = "err-key" }
    tmp = F.tmpdir()
  end)

  teardown(function()
    if c then c:close() end
    mock:stop()
    F.run("rm -rf " .. F.sh(tmp))
  end)

  before_each(function()
    mock:reset()
    mock:seed { count = 3, offer_id = 0, type = 2, code = "https://t.example/pb?c={click_id}" }
    if c then c:close() end
    c = assert(postback.client(mock:client_opts { timeout = 0.5, retries = 1 }))
  end)

  it("validation: validate, client options, records, ids, list queries, updates", function()
    local k = cases()
    -- validate's problems are plain tables; their messages are one line each
    local ok, list = postback.validate { offer_id = -1, affiliate_id = "x", type = 9, code = "ftp://x/{clickid}\r\n" }
    assert.is_false(ok)
    for _, p in ipairs(list) do
      assert(not p.message:find("[\r\n%z]"), "validate: " .. visible(p.message))
    end
    k.add("allowed_types(9)", postback.allowed_types(9))
    local opts = {
      { base_url = "ftp://x" }, { base_url = "http://api.example" }, { base_url = "http://u:p@127.0.0.1" },
      { timeout = -1 }, { retries = 1.5 }, { bogus = 1 }, { ["bad\nname"] = 1 }, { network = "" },
      { api_key = "a\r\nb" }, { headers = { ["X-A"] = "a\r\nb" } }, { headers = { Authorization = "x" } },
      { transport = 5 },
    }
    for i, o in ipairs(opts) do
      local full = { network = "n", api_key = "k", base_url = mock.url }
      for key, v in pairs(o) do full[key] = v end
      k.add("client options #" .. i, postback.client(full))
    end
    local records = {
      {}, { offer_id = 1 }, { offer_id = 0, affiliate_id = 0, type = 9, code = "x" },
      { offer_id = 0, affiliate_id = 1, type = 2, code = "https://t.example/?c={clickid}" },
      { offer_id = 0, affiliate_id = 1, type = 2, code = "https://t.example/\r\nX: y" },
      { offer_id = 0, affiliate_id = 1, type = 2, code = "https://t.example/" .. ("x"):rep(5000) },
      { offer_id = 0, affiliate_id = 2 ^ 60, type = 2, code = "https://t.example/" },
      { offer_id = 2, affiliate_id = 1, type = 3, code = "<img src='https://t.example/'>" }, -- protocol rule
      { offer_id = 999, affiliate_id = 1, type = 2, code = "https://t.example/" },         -- no such offer
    }
    for i, rec in ipairs(records) do k.add("create record #" .. i, c:create(rec)) end
    local ids = { 0, -1, 1.5, 2 ^ 53, 2 ^ 60, 0 / 0, math.huge, "7", "a\nb", {}, true }
    for _, id in ipairs(ids) do
      local what = visible(type(id) == "table" and "{}" or tostring(id))
      k.add("get(" .. what .. ")", c:get(id))
      k.add("delete(" .. what .. ")", c:delete(id))
      k.add("update(" .. what .. ")", c:update(id, { code = "https://t.example/" }))
      k.add("set_status(" .. what .. ")", c:set_status(id, "approved"))
      k.add("offer(" .. what .. ")", c:offer(id))
    end
    k.add("get(nil)", c:get(nil))
    local queries = {
      { limit = 0 }, { limit = 1001 }, { limit = "x" }, { page = 0 }, { page = 1.5 }, { sort = "foo" },
      { sort = "a\nb" }, { sort = 5 }, { fields = {} }, { fields = { "nope" } }, { fields = { "a\r\nb" } },
      { filters = { nope = 1 } }, { filters = { ["a\nb"] = 1 } }, { filters = { code = { BOGUS = 1 } } },
      { filters = { code = { ["X\r\nY"] = 1 } } }, { filters = { code = { CONTAINS = {} } } },
      { filters = "x" }, { bogus = 1 }, { ["x\ny"] = 1 },
    }
    for i, query in ipairs(queries) do
      k.add("list query #" .. i, c:list(query))
      k.raises("each query #" .. i, function() for _ in c:each(query) do end end)
    end
    k.add("update: unknown field", c:update(1, { nope = 1 }))
    k.add("update: read-only field", c:update(1, { offer_id = 1 }))
    k.add("update: field with a newline", c:update(1, { ["a\nb"] = 1 }))
    k.add("update: nothing", c:update(1, {}))
    k.add("update: bad code", c:update(1, { code = "not a url" }))
    k.add("update: bad type", c:update(1, { type = 7 }))
    k.add("set_status: maybe", c:set_status(1, "maybe"))
    k.add("set_status: with a newline", c:set_status(1, "a\r\nb"))
    local n = k.check()
    assert.is_true(n > 100)
  end)

  it("render errors", function()
    local k = cases()
    k.add("a table value", postback.render("https://t.example/{click_id}", { click_id = {} }))
    k.add("a function value", postback.render("https://t.example/{click_id}", { click_id = print }))
    k.add("missing = error", postback.render("https://t.example/{click_id}", {}, { missing = "error" }))
    local t = assert(postback.template("https://t.example/{click_id}&p={payout}"))
    k.add("template:render missing", t:render({ click_id = "a" }, { missing = "error" }))
    k.add("template:render NaN", t:render { click_id = "a", payout = 0 / 0 })
    k.check()
  end)

  it("fire: bad URLs, CR and LF, blocked addresses, bad headers, records", function()
    local k = cases()
    k.add("fire('ftp://x/')", postback.fire("ftp://x/"))
    k.add("a URL with CR LF", postback.fire("http://127.0.0.1/\r\nX-Injected: 1", nil, LOCAL))
    k.add("a URL with a bare CR", postback.fire("http://127.0.0.1/a\rb", nil, LOCAL))
    k.add("a value with LF, encode = none",
      postback.fire("http://127.0.0.1/{click_id}", { click_id = "a\nb" }, { encode = "none", allow_private = true }))
    k.add("no host", postback.fire("http:///x"))
    k.add("longer than max_url", postback.fire("https://t.example/" .. ("x"):rep(100), nil, { max_url = 64 }))
    k.add("user info", postback.fire("https://u:p@t.example/"))
    k.add("type 3 record", postback.fire { type = 3, code = "<img src='https://t.example/'>" })
    k.add("a record with no code", postback.fire { type = 2 })
    k.add("type 7 record", postback.fire { type = 7, code = "https://t.example/" })
    k.add("missing = error", postback.fire("https://t.example/{click_id}", {}, { missing = "error" }))
    k.add("blocked: loopback", postback.fire(mock.url .. "/postback"))
    k.add("blocked: private network", postback.fire("http://10.0.0.1/postback", nil, { timeout = 2 }))
    k.add("bad header", postback.fire(mock.url .. "/postback", nil,
      { headers = { ["X-A"] = "a\r\nb" }, allow_private = true }))
    k.add("bad header name", postback.fire(mock.url .. "/postback", nil,
      { headers = { ["X A:"] = "a" }, allow_private = true }))
    k.check()
  end)

  it("fire_many: every kind of bad item, with and without headers of its own", function()
    local k = cases()
    local good = mock.url .. "/postback?c={click_id}"
    local items = {
      "ftp://x/",
      "http://127.0.0.1/\r\nX-Injected: 1",
      { url = "ftp://x/", values = {}, headers = { ["X-A"] = "a" } },
      { url = good, values = { click_id = "1" }, headers = { ["X-A"] = "a\r\nb" } },
      { url = good, values = { click_id = "1" }, headers = { ["Bad Name"] = "a" } },
      { url = "http://127.0.0.1/\r\nX: y", values = {}, headers = { ["X-A"] = "a" } },
      { url = good, values = 5 },
      { type = 3, code = "<img>" },
      { url = "http://127.0.0.1:" .. closed_port() .. "/postback", headers = { ["X-A"] = "a" } },
      "http://127.0.0.1:" .. closed_port() .. "/postback",
      { url = good, values = { click_id = "ok" }, headers = { ["X-A"] = "a" } }, -- blocked (no allow_private)
      42,
    }
    local ok, results = pcall(postback.fire_many, items, { retries = 0, timeout = 2 })
    assert(ok, "fire_many raised: " .. tostring(results))
    assert.equal(#items, #results)
    for i, r in ipairs(results) do
      assert.is_false(r.ok, "item " .. i)
      k.add("item " .. i, r.error)
    end
    -- an item with headers of its own is held to the destination policy too
    assert.equal("blocked_address", results[11].error and results[11].error.code)
    assert.equal(0, #mock:received())
    -- with the loopback allowed: a refused connection and an HTTP error, each with headers of its own
    results = postback.fire_many({
      { url = "http://127.0.0.1:" .. closed_port() .. "/postback", headers = { ["X-A"] = "a" } },
      { url = mock.url .. "/postback?mock_fault=status&mock_status=500", headers = { ["X-A"] = "a" } },
      { url = mock.url .. "/postback?mock_fault=slow&mock_delay=1", headers = { ["X-A"] = "a" } },
      mock.url .. "/postback?mock_fault=status&mock_status=404",
    }, { retries = 0, timeout = 0.3, allow_private = true })
    for i, r in ipairs(results) do
      assert.is_false(r.ok, "allowed item " .. i)
      k.add("allowed item " .. i, r.error)
    end
    k.add("fire_many with bad headers option", postback.fire_many({ "https://t.example/" },
      { headers = { ["X-A"] = "a\nb" } }))
    k.check()
  end)

  it("dispatcher: d:fire errors, delivered failures, a locked spool, wait", function()
    local k = cases()
    local d = assert(postback.dispatcher { retries = 0 })
    k.add("d:fire('ftp://x/')", d:fire("ftp://x/"))
    k.add("d:fire URL with CR LF", d:fire("http://127.0.0.1/\r\nX: y"))
    k.add("d:fire bad header", d:fire("https://t.example/", nil, { headers = { ["X-A"] = "a\r\nb" } }))
    k.add("d:fire type 3", d:fire { type = 3, code = "<img>" })
    k.add("d:fire missing", d:fire("https://t.example/{click_id}", {}, { missing = "error" }))
    d:close()
    local results = {}
    local function keep(r) results[#results + 1] = r end
    local blocked = assert(postback.dispatcher { retries = 0, on_result = keep })
    assert(blocked:fire(mock.url .. "/postback"))
    assert(blocked:fire(mock.url .. "/postback", nil, { headers = { ["X-A"] = "a" } }))
    assert(blocked:wait(10))
    blocked:close()
    local allowed = assert(postback.dispatcher { retries = 0, timeout = 0.3, allow_private = true, on_result = keep })
    assert(allowed:fire("http://127.0.0.1:" .. closed_port() .. "/postback"))
    assert(allowed:fire(mock.url .. "/postback?mock_fault=status&mock_status=503"))
    assert(allowed:fire(mock.url .. "/postback?mock_fault=slow&mock_delay=1", nil, { headers = { ["X-A"] = "a" } }))
    assert(allowed:wait(10))
    allowed:close()
    assert.equal(5, #results)
    for i, r in ipairs(results) do
      assert.is_false(r.ok, "result " .. i)
      k.add("delivered failure " .. i, r.error)
    end
    local slow = assert(postback.dispatcher { retries = 0, timeout = 5, allow_private = true })
    assert(slow:fire(mock.url .. "/postback?mock_fault=slow&mock_delay=1"))
    k.add("d:wait timeout", slow:wait(0.05))
    slow:close()
    local path = tmp .. "/d.spool"
    local holder = assert(postback.dispatcher { spool = path })
    k.add("dispatcher on a locked spool", postback.dispatcher { spool = path })
    holder:close()
    k.check()
  end)

  it("transport errors, timeouts, HTTP, API and decode errors", function()
    local k = cases()
    local port = closed_port()
    local nowhere = assert(postback.client { network = "err", api_key = "err-key", retries = 0,
      base_url = "http://127.0.0.1:" .. port })
    k.add("client: nothing listening", nowhere:get(1))
    k.add("client list: nothing listening", nowhere:list {})
    k.raises("each: nothing listening", function() for _ in nowhere:each {} do end end)
    nowhere:close()
    k.add("fire: nothing listening", postback.fire("http://127.0.0.1:" .. port .. "/", nil,
      { retries = 0, allow_private = true }))
    mock:fault { fault = "slow", delay = 1, times = 2 }
    k.add("client: timeout", c:get(1))
    k.add("fire: timeout", postback.fire(mock.url .. "/postback?mock_fault=slow&mock_delay=1", nil,
      { retries = 0, timeout = 0.2, allow_private = true }))
    k.add("fire: HTTP 500", postback.fire(mock.url .. "/postback?mock_fault=status&mock_status=500", nil,
      { retries = 0, allow_private = true }))
    k.add("fire: ok_body", postback.fire(mock.url .. "/postback", nil, { ok_body = "^accepted", allow_private = true }))
    mock:fault { fault = "html", status = 502, times = 2 }
    k.add("client: HTML 502", c:get(1))
    mock:fault { fault = "status", status = 500, times = 2, content_type = "text/plain",
                 body = "Internal error\r\nat line 1\n\tat line 2\n" }
    k.add("client: plain text 500 on several lines", c:get(1))
    k.add("client: API 404", c:get(99))
    local lax = assert(postback.client(mock:client_opts { check_protocol = false }))
    k.add("client: API 400 (refused by the server)", lax:create { offer_id = 2, affiliate_id = 1, type = 1,
      code = "https://t.example/" })
    lax:close()
    mock:fault { fault = "status", status = 400, times = 1,
                 body = '{"code": 400, "message": "bad request:\\nline two\\r\\nline three", "data": null}' }
    k.add("client: API error whose message has line breaks", c:get(1))
    mock:fault { fault = "malformed", times = 1 }
    k.add("client: malformed JSON", c:get(1))
    mock:fault { fault = "oversized", size = 2 * 1024 * 1024, times = 1 }
    local capped = assert(postback.client(mock:client_opts { retries = 0, max_body = 1024 * 1024 }))
    k.add("client: body over the cap", capped:get(1))
    capped:close()
    mock:fault { fault = "status", status = 200, times = 1, body = '{"code": 0, "data": {"x": 1}}' }
    k.add("client: no data.affiliate_postback", c:get(1))
    mock:fault { fault = "status", status = 200, times = 1, body = '{"code": 0, "data": {"rowset": {"a": 1}}}' }
    k.add("client: rowset not an array", c:list {})
    mock:fault { fault = "status", status = 200, times = 1,
                 body = '{"code": 0, "data": {"rowset": [], "totalPages": "x\\ny"}}' }
    k.raises("each: totalPages not a number", function() for _ in c:each {} do end end)
    mock:fault { fault = "status", status = 200, times = 1, body = '{"code": 0, "data": {"offer": {"id": 2}}}' }
    local fresh = assert(postback.client(mock:client_opts {}))
    k.add("create: an offer without conversion_protocol", fresh:create { offer_id = 2, affiliate_id = 1, type = 2,
      code = "https://t.example/" })
    fresh:close()
    k.check()
  end)

  it("spool errors", function()
    local k = cases()
    local path = tmp .. "/s.spool"
    local sp = assert(spool.open(path))
    k.add("a locked spool", spool.open(path))
    sp:close()
    k.add("a directory", spool.open(tmp))
    k.add("a NUL in the path", spool.open(tmp .. "/a\0b"))
    k.add("a path with a newline in a missing directory", spool.open(tmp .. "/no\ndir/s.spool"))
    k.add("too large a record", (function()
      local s = assert(spool.open(tmp .. "/small.spool", { max_record = 64 }))
      local id, err = s:add { url = ("x"):rep(200) }
      s:close()
      return id, err
    end)())
    k.check()
  end)

  it("migrate and batch errors", function()
    local k = cases()
    local T = postback.transforms
    local migrate = postback.migrate
    k.call("a journal in a missing directory", migrate, { client = c, journal = tmp .. "/none/j",
      transform = T.set_param("a", "1") })
    mock:fault { fault = "status", status = 500, times = 10 }
    k.call("the listing fails", migrate, { client = c, transform = T.set_param("a", "1") })
    mock:control("DELETE", "/_mock/faults")
    local bad = tmp .. "/bad.jsonl"
    F.writefile(bad, '{"id": 1, "code": "https://t.example/"}\nnot json\n')
    k.call("a JSONL source with a bad line", migrate, { client = c, source = bad, transform = T.set_param("a", "1") })
    k.call("a JSONL source that does not exist", migrate, { client = c, source = tmp .. "/none.jsonl",
      transform = T.set_param("a", "1") })
    local lax = assert(postback.client(mock:client_opts { check_protocol = false }))
    mock:seed { count = 1, offer_id = 2, type = 2, code = "https://t.example/pb" } -- id 4
    local report = assert(postback.migrate { client = lax, transform = function(pb)
      if pb.id == 1 then return nil, "skipped by policy" end
      if pb.id == 2 then return nil, "two lines:\nsecond" end
      if pb.id == 3 then return { code = "https://t.example/\r\nX: y" } end
      return { type = 1 } -- offer 2 allows type 2 only: refused by the server
    end })
    lax:close()
    assert.equal(4, report.failed)
    for _, e in ipairs(report.errors) do k.add("report error, postback " .. e.id, e.error) end
    local results = c:batch {
      { "bogus" }, 7, { "get", 99 }, { "get", "x" }, { "create", {} }, { "update", 1, {} },
      { "set_status", 1, "maybe" }, { "delete", 0 }, { op = "update", id = 1, fields = { ["a\nb"] = 1 } },
    }
    for i, r in ipairs(results) do
      assert.is_false(r.ok, "op " .. i)
      k.add("batch op " .. i, r.error)
    end
    k.check()
  end)

  it("postback fire 'ftp://x/' on the command line: one line, non-zero exit", function()
    for _, url in ipairs { "ftp://x/", "http://127.0.0.1/\r\nX: y" } do
      local out, err = tmp .. "/out", tmp .. "/err"
      local cmd = ("env LUA_PATH=%s LUA_CPATH=%s %s bin/postback fire %s >%s 2>%s </dev/null"):format(
        F.sh(package.path), F.sh(package.cpath), testenv.lua, F.sh(url), F.sh(out), F.sh(err))
      local code = F.exit_code(os.execute(cmd))
      local stdout, stderr = assert(F.readfile(out)), assert(F.readfile(err))
      assert.is_true(code ~= 0, "exit 0 for " .. visible(url))
      assert.equal("", stdout)
      assert.matches("^[^\n]+\n$", stderr, nil, false, "not one line: " .. visible(stderr))
      assert.is_nil(stderr:find("traceback", 1, true), stderr)
      assert.is_nil(stderr:find("%.lua:%d"), stderr)
      assert.matches("validation error", stderr, 1, true)
    end
  end)
end)

describe("fire_many items with headers of their own", function()
  local mock

  setup(function() mock = mockproc.start { network = "hdr", api_key = "hdr-key" } end)
  teardown(function() mock:stop() end)
  before_each(function() mock:reset() end)

  local function received()
    local by_click = {}
    for _, r in ipairs(mock:received()) do
      local click = (r.query or ""):match("c=([^&]*)")
      by_click[click] = r
    end
    return by_click
  end

  it("reach the receiver, merged over the common headers; plain items beside them", function()
    local url = mock.url .. "/postback?c={click_id}"
    local items = {
      { url = url, values = { click_id = "h1" }, headers = { ["X-Pb-Item"] = "one" } },
      (url:gsub("{click_id}", "plain1")),
      { url = url, values = { click_id = "h2" }, headers = { ["X-Pb-Item"] = "two", ["X-Pb-Common"] = "mine" } },
      { url = url, values = { click_id = "v1" } },
      { url = url, values = { click_id = "h3" }, headers = {} },
    }
    local results, err = postback.fire_many(items, { headers = { ["X-Pb-Common"] = "all" }, allow_private = true,
                                                     concurrency = 3 })
    assert(results, tostring(err))
    assert.equal(#items, #results)
    for i, r in ipairs(results) do assert(r.ok, ("item %d: %s"):format(i, tostring(r.error))) end
    local got = received()
    assert.equal("one", got.h1.headers["x-pb-item"])
    assert.equal("all", got.h1.headers["x-pb-common"])
    assert.equal("two", got.h2.headers["x-pb-item"])
    assert.equal("mine", got.h2.headers["x-pb-common"])
    assert.is_nil(got.h3.headers["x-pb-item"])
    assert.equal("all", got.h3.headers["x-pb-common"])
    assert.equal("all", got.plain1.headers["x-pb-common"])
    assert.equal("all", got.v1.headers["x-pb-common"])
    assert.is_nil(got.v1.headers["x-pb-item"])
    assert.equal(5, #mock:received())
  end)

  it("from an iterator, streamed to on_result", function()
    local n = testenv.slow and 20 or 200
    local i = 0
    local seen = {}
    local count = postback.fire_many(function()
      i = i + 1
      if i > n then return nil end
      return { url = mock.url .. "/postback?c={click_id}", values = { click_id = "i" .. i },
               headers = { ["X-Pb-Index"] = tostring(i) } }
    end, { allow_private = true, on_result = function(r, idx)
      seen[idx] = r -- asserted after: an error here would be caught
    end })
    assert.equal(n, count)
    local got = received()
    for k = 1, n do
      assert(seen[k], "no result for item " .. k)
      assert(seen[k].ok, tostring(seen[k].error))
      assert.equal(tostring(k), got["i" .. k].headers["x-pb-index"])
    end
  end)

  it("through the dispatcher: d:fire with headers", function()
    local d = assert(postback.dispatcher { allow_private = true, headers = { ["X-Pb-Common"] = "all" } })
    assert(d:fire(mock.url .. "/postback?c={click_id}", { click_id = "d1" }, { headers = { ["X-Pb-Item"] = "d" } }))
    assert(d:wait(10))
    d:close()
    local got = received()
    assert.equal("d", got.d1.headers["x-pb-item"])
    assert.equal("all", got.d1.headers["x-pb-common"])
  end)
end)
