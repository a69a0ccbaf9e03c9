-- The libcurl engine of postback.core as the binding hands it to Lua: what
-- happens when Lua code run by a fire (an __index of the values, a feed's
-- iterator) closes the engine. Each case runs in a child process, so a crash
-- fails its test instead of the suite.
local child = require "child"

describe("core.engine closed while it fires", function()
  local function run(body)
    local r = child.run([[
      local core = require "postback.core"
      local e = core.engine {}
      local ok, msg = pcall(function() ]] .. body .. [[ end)
      return { ok = ok, msg = tostring(msg), closed = tostring(e) }
    ]], { limit = 20 })
    assert.is_table(r.value, child.describe(r))
    return r.value
  end

  local cases = {
    { "by an __index of the values (a template)", [[
      local t = core.template("http://127.0.0.1:9/x?c={click_id}")
      return e:fire(t, setmetatable({}, { __index = function() e:close(); return "abc" end }), 1)]] },
    { "by an __index of the values (a code string)", [[
      return e:fire("http://127.0.0.1:9/x?c={click_id}",
        setmetatable({}, { __index = function() e:close(); return "abc" end }), 1)]] },
    { "by the iterator of a feed", [[
      local n = 0
      local function items()
        n = n + 1
        if n == 1 then e:close() end
        if n <= 2 then return "http://127.0.0.1:9/x" end
      end
      return e:feed(items, 1, 5)]] },
    { "by an __index of a feed item's values", [[
      local t = core.template("http://127.0.0.1:9/x?c={click_id}")
      local v = setmetatable({}, { __index = function() e:close(); return 1 end })
      return e:feed({ { url = t, values = v } }, 1, 5)]] },
  }
  for _, case in ipairs(cases) do
    it("raises when closed " .. case[1], function()
      local v = run(case[2])
      assert.is_false(v.ok)
      assert.matches("engine was closed while firing", v.msg, 1, true)
      assert.are.equal("postback.engine (closed)", v.closed)
    end)
  end
end)

describe("core.engine options that raise", function()
  local core = require "postback.core"
  local testenv = require "testenv"

  -- Resident memory of this process in KiB, where Linux tells it.
  local function rss()
    local f = io.open("/proc/self/statm")
    if not f then return nil end
    local pages = f:read("*n") and f:read("*n")
    f:close()
    return pages and pages * 4
  end

  it("free the destination policy they were building", function()
    -- Each engine{} below raises after its policy has taken 2,000 networks.
    local nets = {}
    for i = 1, 2000 do nets[i] = ("10.%d.%d.0/24"):format(math.floor(i / 256), i % 256) end
    local bad_list = { destinations = true, allow_networks = {} }
    local bad_flag = { destinations = true, allow_networks = nets, allow_private = "yes" }
    for i, n in ipairs(nets) do bad_list.allow_networks[i] = n end
    bad_list.allow_networks[#nets + 1] = 1
    local cases = {
      { opts = bad_list, message = "allow_networks[2001] must be a string, got number" },
      { opts = bad_flag, message = "option allow_private must be a boolean" },
    }
    for _, c in ipairs(cases) do
      local ok, msg = pcall(core.engine, c.opts)
      assert.is_false(ok)
      assert.matches(c.message, msg, 1, true)
    end
    local rounds = testenv.slow and 20 or 400
    collectgarbage("collect")
    local before = rss()
    for _ = 1, rounds do
      assert.is_false(pcall(core.engine, bad_list))
      assert.is_false(pcall(core.engine, bad_flag))
      collectgarbage("collect") -- a policy the binding kept is freed before the next
    end
    collectgarbage("collect")
    collectgarbage("collect")
    local after = rss()
    if before and not testenv.slow then
      -- a lost policy holds 2,000 networks (tens of KiB): 800 of them, MiBs
      assert.is_true(after - before < 4096, ("resident memory grew by %d KiB"):format(after - before))
    end
  end)
end)

describe("core.engine after a fire's values raised", function()
  local core = require "postback.core"
  local F = require "fixtures"

  it("keeps reusing its buffers", function()
    local e = core.engine { max_running = 1 }
    local code = "http://127.0.0.1:9/p?c={click_id}"
    local t = core.template(code)
    local strict = setmetatable({}, { __index = function(_, k) error("no value for " .. k, 0) end })
    assert.is_false(pcall(e.fire, e, code, strict, 1))
    assert.is_false(pcall(e.fire, e, t, strict, 2))
    assert.is_false(pcall(core.render, code, strict))
    -- With the collector stopped, fires that reuse a buffer allocate next to
    -- nothing on the Lua heap (their transfers are C memory).
    local n = F.size(5000)
    local values = { click_id = "abc" }
    collectgarbage("collect")
    collectgarbage("stop")
    local before = collectgarbage("count")
    for i = 1, n do
      if not (e:fire(code, values, 2 * i) and e:fire(t, values, 2 * i + 1)) then
        collectgarbage("restart")
        error("a fire was refused")
      end
    end
    local grew = collectgarbage("count") - before
    collectgarbage("restart")
    e:close()
    assert.is_true(grew < 16, ("%d fires allocated %.1f KiB"):format(2 * n, grew))
  end)
end)

describe("a URL longer than max_url", function()
  local postback = require "postback"
  local core = require "postback.core"
  local long = "https://t.example/" .. ("x"):rep(100)
  local want = "postback URL is longer than max_url (64 bytes)"

  local function check(err, how)
    assert.is_table(err, how)
    assert.are.equal("validation", err.kind, how)
    assert.are.equal("too_long", err.code, how)
    assert.are.equal("url", err.field, how)
    assert.are.equal(want, err.message, how)
    assert.is_false(err.retryable, how)
  end

  it("is too_long on the engine's fast path, rendered or not", function()
    local e = core.engine { max_url = 64 }
    local ok, err = e:fire(long, nil, 1)
    assert.is_nil(ok)
    check(err, "e:fire(URL)")
    ok, err = e:fire(long .. "?c={click_id}", { click_id = 1 }, 2)
    assert.is_nil(ok)
    check(err, "e:fire(code)")
    ok, err = e:fire(core.template(long .. "?c={click_id}"), { click_id = 1 }, 3)
    assert.is_nil(ok)
    check(err, "e:fire(template)")
    local i, what
    i, what, err = e:feed({ long }, 1, 5)
    assert.are.equal(1, i)
    assert.are.equal("error", what)
    check(err, "e:feed")
    -- the default bound
    ok, err = core.engine {}:fire("https://t.example/" .. ("x"):rep(16384), nil, 4)
    assert.is_nil(ok)
    assert.are.equal("too_long", err.code)
    assert.are.equal("postback URL is longer than max_url (16384 bytes)", err.message)
    e:close()
  end)

  it("is too_long in a transport's request; a bad URL there is invalid_url", function()
    local t = require("postback.transport.curl").new { allow_private = true }
    local codes = {}
    for _, url in ipairs { long, "ftp://127.0.0.1/", "http://127.0.0.1/a b" } do
      local r, err = t:request { url = url, max_url = 64 }
      codes[#codes + 1] = r and "sent" or (err.kind .. " " .. tostring(err.code) .. " " .. tostring(err.sent))
    end
    assert.same({ "validation too_long false", "validation invalid_url false", "validation invalid_url false" }, codes)
    t.engine:close()
  end)

  it("is the same error from d:fire, fire_many and fire, with or without headers", function()
    local d = postback.dispatcher { max_url = 64 }
    local id, err = d:fire(long)
    assert.is_nil(id)
    check(err, "d:fire")
    id, err = d:fire(postback.template(long .. "{click_id}"), { click_id = 1 })
    assert.is_nil(id)
    check(err, "d:fire(template)")
    id, err = d:fire(long, nil, { headers = { ["X-A"] = "1" } })
    assert.is_nil(id)
    check(err, "d:fire with headers")
    d:close()
    local results = assert(postback.fire_many({ long, long .. "{click_id}", { url = long, headers = { ["X-A"] = "1" } } },
      { max_url = 64 }))
    for i = 1, 3 do
      assert.is_false(results[i].ok)
      check(results[i].error, "fire_many item " .. i)
    end
    local r
    r, err = postback.fire(long, nil, { max_url = 64 })
    assert.is_nil(r)
    check(err, "fire")
  end)
end)

describe("core.engine against a receiver", function()
  local core = require "postback.core"
  local mockproc = require "mockproc"
  local mock

  setup(function() mock = mockproc.start {} end)
  teardown(function() mock:stop() end)

  -- Fires url as a plain fire and returns the drain's sink once it is done.
  local function fire_and_drain(e, url, tag)
    assert(e:fire(url, nil, tag))
    local sink = { plain = true, results = {}, slow = {} }
    local deadline = core.now() + 10
    while e:perform(0.1) == 0 and core.now() < deadline do end
    e:drain(sink)
    return sink
  end

  it("refuses URLs with user info without allow_userinfo", function()
    local e = core.engine {}
    local ok, err = e:fire(mock.url:gsub("//", "//u:p@") .. "/postback", nil, 1)
    assert.is_nil(ok)
    assert.are.equal("invalid_url", err.code)
    e:close()
  end)

  it("fires URLs with user info as fast fires whose result Lua makes (allow_userinfo), the others in C", function()
    local e = core.engine { allow_userinfo = true }
    local sink = fire_and_drain(e, mock.url:gsub("//", "//u:p@") .. "/postback?a=1", 1)
    assert.is_nil(sink.results[1]) -- no result made in C: it would show the user info
    assert.are.equal(1, #sink.slow)
    assert.are.equal(1, sink.slow[1].tag)
    assert.is_true(sink.slow[1].fast)
    assert.are.equal(200, sink.slow[1].status)
    sink = fire_and_drain(e, mock.url .. "/postback?a=2", 2)
    assert.are.equal(0, #sink.slow)
    assert.is_true(sink.results[2].ok)
    e:close()
  end)

  it("stores results under tags past 2^31 (up to 2^53 - 1)", function()
    local e = core.engine {}
    for _, tag in ipairs { 2 ^ 31 + 5, 2 ^ 32 + 1, 2 ^ 53 - 1 } do
      local sink = fire_and_drain(e, mock.url .. "/postback", tag)
      assert.are.equal(0, #sink.slow)
      local key, r = next(sink.results)
      assert.are.equal(tag, key)
      assert.is_true(r.ok)
    end
    e:close()
  end)
end)
