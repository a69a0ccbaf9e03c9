-- Firing postbacks against the mock's receiver (a real HTTP server on loopback):
-- every call passes allow_private = true, since loopback is refused by default.
local postback = require "postback"
local core = require "postback.core"
local mockproc = require "mockproc"

local under_valgrind = os.getenv("POSTBACK_UNDER_VALGRIND") ~= nil

local function parse_query(q)
  local t = {}
  for k, v in (q or ""):gmatch("([^&=]+)=([^&]*)") do t[k] = v end
  return t
end

describe("firing", function()
  local mock, code

  setup(function()
    mock = mockproc.start {}
    code = mock.url .. "/postback?click_id={click_id}&payout={payout}&sub={aff_sub1}"
  end)

  teardown(function() mock:stop() end)

  before_each(function() mock:reset() end)

  local function received()
    local r = mock:received()
    assert.is_table(r)
    return r
  end

  describe("fire", function()
    it("renders and GETs the postback, returning a result", function()
      local r = assert(postback.fire(code, { click_id = "ab 1", payout = 2.5, aff_sub1 = "x/y" }, { allow_private = true }))
      assert.is_true(r.ok)
      assert.equal(200, r.status)
      assert.equal("OK", r.body)
      assert.equal(1, r.attempts)
      assert.is_number(r.time)
      assert.equal(mock.url .. "/postback?click_id=ab%201&payout=2.5&sub=x%2Fy", r.url)
      local got = received()
      assert.equal(1, #got)
      assert.equal("GET", got[1].method)
      assert.equal("click_id=ab%201&payout=2.5&sub=x%2Fy", got[1].query)
    end)

    it("accepts a template object and a postback record", function()
      local t = postback.template(code)
      assert(postback.fire(t, { click_id = "t" }, { allow_private = true }))
      assert(postback.fire({ type = 2, code = code }, { click_id = "r" }, { allow_private = true }))
      assert(postback.fire({ type = 1, code = code }, { click_id = "i" }, { allow_private = true }))
      local got = received()
      assert.equal(3, #got)
      assert.equal("t", parse_query(got[1].query).click_id)
      assert.equal("r", parse_query(got[2].query).click_id)
    end)

    it("refuses an HTML pixel, pointing to render", function()
      local r, err = postback.fire({ type = 3, code = "<img src=\"" .. code .. "\">" }, {})
      assert.is_nil(r)
      assert.equal("validation", err.kind)
      assert.matches("render", err.message)
      assert.equal(0, #received())
    end)

    it("refuses other schemes and CR/LF/NUL before sending", function()
      for _, bad in ipairs {
        "ftp://127.0.0.1/x", "file:///etc/passwd", "javascript:alert(1)",
        mock.url .. "/postback?a=1\r\nX-Evil: 1", mock.url .. "/post back", mock.url .. "/p\0x",
      } do
        local r, err = postback.fire(bad, nil, { allow_private = true })
        assert.is_nil(r)
        assert.equal("validation", err.kind)
      end
      -- a value with CR/LF is percent-encoded, never raw
      assert(postback.fire(code, { click_id = "a\r\nb" }, { allow_private = true }))
      assert.equal("a%0D%0Ab", parse_query(received()[1].query).click_id)
      local r, err = postback.fire(code, { click_id = "x" }, { allow_private = true, headers = { ["X-A"] = "1\r\nX-B: 2" } })
      assert.is_nil(r)
      assert.equal("validation", err.kind)
      assert.equal(1, #received())
    end)

    it("sends extra headers", function()
      assert(postback.fire(code, { click_id = "h" }, { allow_private = true, headers = { ["X-Network"] = "demo" } }))
      assert.equal("demo", received()[1].headers["x-network"])
    end)

    it("refuses a header name with a colon in it, nothing sent; a \"Name: value\" line is fine", function()
      local bad = { ["X-A:b"] = "v" }
      local r, err = postback.fire(code, { click_id = "c" }, { allow_private = true, headers = bad })
      assert.is_nil(r)
      assert.equal("validation", err.kind)
      assert.equal("headers", err.field)
      local results = postback.fire_many({ { url = code, values = { click_id = "c" }, headers = bad } },
                                         { allow_private = true })
      assert.equal("validation", results[1].error.kind)
      local d = postback.dispatcher { allow_private = true }
      local id, derr = d:fire(code, { click_id = "c" }, { headers = bad })
      d:close()
      assert.is_nil(id)
      assert.equal("validation", derr.kind)
      assert.equal(0, #received())
      assert(postback.fire(code, { click_id = "c" }, { allow_private = true, headers = { "X-A: b:c" } }))
      assert.equal("b:c", received()[1].headers["x-a"])
    end)

    it("retries 5xx and counts attempts at the receiver", function()
      mock:fault { fault = "status", status = 503, times = 2, match = "/postback" }
      local r = assert(postback.fire(code, { click_id = "r" }, { allow_private = true, retries = 3, backoff_base = 0.01 }))
      assert.equal(3, r.attempts)
      assert.equal(3, #received())
    end)

    it("never makes more than retries + 1 attempts", function()
      mock:fault { fault = "status", status = 500, times = 50, match = "/postback" }
      local r, err = postback.fire(code, { click_id = "r" }, { allow_private = true, retries = 2, backoff_base = 0.01 })
      assert.is_nil(r)
      assert.equal("http", err.kind)
      assert.equal(500, err.status)
      assert.equal(3, err.attempts)
      assert.equal(3, #received())
    end)

    it("does not retry 4xx", function()
      mock:fault { fault = "status", status = 404, times = 5, match = "/postback" }
      local r, err = postback.fire(code, {}, { allow_private = true, retries = 3, backoff_base = 0.01 })
      assert.is_nil(r)
      assert.equal(404, err.status)
      assert.equal(1, err.attempts)
    end)

    it("honours Retry-After on 429", function()
      mock:fault { fault = "status", status = 429, retry_after = "1", times = 1, match = "/postback" }
      local t0 = core.now()
      local r = assert(postback.fire(code, {}, { allow_private = true, retries = 1, backoff_base = 0.01 }))
      assert.equal(2, r.attempts)
      assert.is_true(core.now() - t0 >= 0.95)
    end)

    it("judges the body with ok_body, and the status with ok_status", function()
      local r, err = postback.fire(code, {}, { allow_private = true, ok_body = "^accepted" })
      assert.is_nil(r)
      assert.equal("http", err.kind)
      assert.matches("ok_body", err.message)
      assert(postback.fire(code, {}, { allow_private = true, ok_body = "^OK$" }))
      local r2, err2 = postback.fire(code, {}, { allow_private = true, ok_status = 204 })
      assert.is_nil(r2)
      assert.equal(200, err2.status)
      assert(postback.fire(code, {}, { allow_private = true, ok_status = { 200, 204 } }))
      assert(postback.fire(code, {}, { allow_private = true, ok_status = function(s) return s == 200 end }))
    end)

    it("times out a slow receiver and reports kind timeout", function()
      mock:fault { fault = "slow", delay = 1, times = 2, match = "/postback" }
      local r, err = postback.fire(code, {}, { allow_private = true, timeout = 0.3, retries = 1, backoff_base = 0.01 })
      assert.is_nil(r)
      assert.equal("timeout", err.kind)
      assert.equal(2, err.attempts)
      -- the mock logs a slow request when it answers: wait for both, so that
      -- they do not land in the next test's log
      local t0 = core.now()
      while #received() < 2 and core.now() - t0 < 5 do core.sleep(0.05) end
      assert.equal(2, #received())
    end)

    it("reports transport errors when nothing listens, after retries", function()
      local port = require("nginxproc").free_port()
      local r, err = postback.fire("http://127.0.0.1:" .. port .. "/x", nil, { allow_private = true, retries = 2, backoff_base = 0.01 })
      assert.is_nil(r)
      assert.equal("transport", err.kind)
      assert.equal(3, err.attempts)
    end)

    it("caps the body it keeps", function()
      mock:fault { fault = "oversized", size = 200000, match = "/postback" }
      local r, err = postback.fire(code, {}, { allow_private = true, max_body = 1000, retries = 0 })
      assert.is_nil(r)
      assert.equal("transport", err.kind)
      assert.equal("too_large", err.reason)
    end)

    it("raises for wrong argument types", function()
      assert.has_error(function() postback.fire(nil) end)
      assert.has_error(function() postback.fire(code, "x") end)
      assert.has_error(function() postback.fire(code, {}, { retries = "x" }) end)
      assert.has_error(function() postback.fire(code, {}, { encode = "base64" }) end)
    end)
  end)

  describe("fire_many", function()
    it("returns results in input order, errors included", function()
      local items = {}
      for i = 1, 50 do items[i] = { url = code, values = { click_id = i } } end
      items[51] = "ftp://nope/"
      items[52] = mock.url .. "/postback?plain=1"
      items[53] = { type = 3, code = "<img>" }
      local results = postback.fire_many(items, { allow_private = true, concurrency = 8 })
      assert.equal(53, #results)
      for i = 1, 50 do
        assert.is_true(results[i].ok)
        assert.equal(tostring(i), parse_query(results[i].url:match("%?(.*)")).click_id)
      end
      assert.is_false(results[51].ok)
      assert.equal("validation", results[51].error.kind)
      assert.is_true(results[52].ok)
      assert.is_false(results[53].ok)
      assert.equal(51, #received())
    end)

    it("streams an iterator to on_result, with bounded concurrency", function()
      local n = under_valgrind and 500 or 10000
      local i, ok, seen, twice = 0, 0, {}, {}
      local count = postback.fire_many(function()
        i = i + 1
        if i <= n then return { url = code, values = { click_id = i } } end
      end, { allow_private = true, concurrency = 64, on_result = function(r, idx)
        if r.ok then ok = ok + 1 end
        if seen[idx] then twice[#twice + 1] = idx end -- asserted after: an error here would be caught
        seen[idx] = true
      end })
      assert.same({}, twice)
      assert.equal(n, count)
      assert.equal(n, ok)
      local got = received()
      assert.equal(n, #got)
      local ids = {}
      for _, g in ipairs(got) do ids[parse_query(g.query).click_id] = true end
      for k = 1, n do assert.is_true(ids[tostring(k)], "missing " .. k) end
    end)

    it("retries failures per item, never more than retries extra attempts", function()
      mock:fault { fault = "status", status = 503, times = 10, match = "click_id=7&" }
      local items = {}
      for i = 1, 20 do items[i] = { url = code, values = { click_id = i } } end
      local results = postback.fire_many(items, { allow_private = true, concurrency = 4, retries = 3, backoff_base = 0.01 })
      for i = 1, 20 do
        if i == 7 then
          assert.is_false(results[i].ok)
          assert.equal(4, results[i].attempts)
        else
          assert.is_true(results[i].ok)
          assert.equal(1, results[i].attempts)
        end
      end
      assert.equal(19 + 4, #received())
    end)

    it("keeps memory flat for a long iterator", function()
      local n = under_valgrind and 300 or 5000
      local i = 0
      collectgarbage()
      local base = collectgarbage("count")
      local peak = 0
      postback.fire_many(function()
        i = i + 1
        if i <= n then return { url = code, values = { click_id = i } } end
      end, { allow_private = true, concurrency = 32, on_result = function(_, idx)
        if idx % 500 == 0 then peak = math.max(peak, collectgarbage("count") - base) end
      end })
      assert.is_true(peak < 8 * 1024, ("grew by %.0f KiB"):format(peak))
    end)
  end)

  describe("dispatcher", function()
    it("fires without blocking and delivers on poll", function()
      local results = {}
      local d = postback.dispatcher { allow_private = true, concurrency = 4, on_result = function(r) results[#results + 1] = r end }
      for i = 1, 20 do assert(d:fire(code, { click_id = i })) end
      assert.equal(20, d:pending())
      assert.equal(0, #received())
      assert.is_true(d:wait(10))
      assert.equal(0, d:pending())
      assert.equal(20, #results)
      assert.equal(20, #received())
      d:close()
      d:close() -- twice is fine
    end)

    it("never blocks in poll(0), even with slow receivers", function()
      mock:fault { fault = "slow", delay = 1, times = 10, match = "/postback" }
      local d = postback.dispatcher { allow_private = true, concurrency = 10, timeout = 5 }
      for i = 1, 10 do d:fire(code, { click_id = i }) end
      local worst = 0
      local t_end = core.now() + 0.5
      while core.now() < t_end do
        local t0 = core.now()
        d:poll(0)
        worst = math.max(worst, core.now() - t0)
        core.sleep(0.005)
      end
      assert.equal(10, d:pending())
      if not under_valgrind then
        assert.is_true(worst < 0.005, ("poll(0) took %.1f ms"):format(worst * 1000))
      end
      assert.is_true(d:wait(10))
      d:close()
    end)

    it("holds a postback for `delay` before its first try", function()
      local d = postback.dispatcher { allow_private = true, delay = 0.4 }
      d:fire(code, { click_id = "late" })
      local t0 = core.now()
      while core.now() - t0 < 0.25 do d:poll(0.05) end
      assert.equal(0, #received())
      assert.is_true(d:wait(5))
      assert.is_true(core.now() - t0 >= 0.38)
      assert.equal(1, #received())
      d:close()
    end)

    it("reports every attempt to on_attempt", function()
      mock:fault { fault = "status", status = 500, times = 2, match = "/postback" }
      local attempts = {}
      local d = postback.dispatcher { allow_private = true, retries = 3, backoff_base = 0.01,
        on_attempt = function(a) attempts[#attempts + 1] = a end }
      d:fire(code, { click_id = "a" })
      assert.is_true(d:wait(5))
      assert.equal(3, #attempts)
      assert.same({ 500, 500, 200 }, { attempts[1].status, attempts[2].status, attempts[3].status })
      assert.same({ 1, 2, 3 }, { attempts[1].attempt, attempts[2].attempt, attempts[3].attempt })
      d:close()
    end)

    it("returns nil, err for a bad target and raises for bad arguments", function()
      local d = postback.dispatcher { allow_private = true }
      local id, err = d:fire("ftp://x/")
      assert.is_nil(id)
      assert.equal("validation", err.kind)
      assert.has_error(function() d:fire(code, 5) end)
      assert.has_error(function() d:poll(-1) end)
      assert.has_error(function() postback.dispatcher { on_result = 5 } end)
      d:close()
    end)
  end)

  describe("spool", function()
    local spool

    before_each(function()
      spool = os.tmpname()
      os.remove(spool)
    end)

    after_each(function()
      for _, suffix in ipairs { "", ".tmp", ".lock", ".corrupt" } do os.remove(spool .. suffix) end
    end)

    it("keeps what failed every retry for the next dispatcher", function()
      mock:fault { fault = "status", status = 500, times = 4, match = "/postback" }
      local d = assert(postback.dispatcher { allow_private = true, spool = spool, retries = 1, backoff_base = 0.01 })
      d:fire(code, { click_id = "s1" })
      d:fire(code, { click_id = "s2" })
      assert.is_true(d:wait(5))
      assert.equal(2, d.failed)
      d:close()
      local d2 = assert(postback.dispatcher { allow_private = true, spool = spool })
      assert.equal(2, d2.recovered)
      assert.is_true(d2:wait(5))
      assert.equal(2, d2.delivered)
      d2:close()
      local d3 = assert(postback.dispatcher { allow_private = true, spool = spool })
      assert.equal(0, d3.recovered)
      d3:close()
    end)

    it("does not keep a failure no later try can change (a 4xx, a blocked address)", function()
      mock:fault { fault = "status", status = 404, times = 1, match = "/postback" }
      local d = assert(postback.dispatcher { allow_private = true, spool = spool, retries = 2, backoff_base = 0.01 })
      d:fire(code, { click_id = "gone" })
      assert.is_true(d:wait(5))
      assert.equal(1, d.failed)
      d:close()
      -- a destination the policy refuses ends as blocked_address, and is not kept either
      local d2 = assert(postback.dispatcher { spool = spool, retries = 2 })
      local id = assert(d2:fire(code, { click_id = "blocked" }))
      assert.is_number(id)
      assert.is_true(d2:wait(5))
      assert.equal(1, d2.failed)
      d2:close()
      local d3 = assert(postback.dispatcher { allow_private = true, spool = spool })
      assert.equal(0, d3.recovered)
      d3:close()
      assert.equal(1, #received()) -- the 404 was asked once; nothing reached it again
    end)

    it("reports a torn last line and moves it out, never fatal", function()
      local d = assert(postback.dispatcher { allow_private = true, spool = spool })
      d:fire(code, { click_id = "t1" })
      d:close() -- closed before sending: still owed
      local f = assert(io.open(spool, "ab"))
      f:write('1234abcd +9 {"url":"http://127.0.0.1:1/x"') -- torn, no checksum match
      f:close()
      local reported = {}
      local d2 = assert(postback.dispatcher { allow_private = true, spool = spool, on_error = function(e) reported[#reported + 1] = e end })
      assert.equal(1, d2.recovered)
      assert.equal(1, d2:stats().spool.corrupt)
      assert.equal(1, #reported)
      assert.equal("torn", reported[1].reason)
      assert.equal(9, reported[1].id)
      assert.is_true(d2:wait(5))
      d2:close()
      os.remove(spool .. ".corrupt")
      assert.equal("t1", parse_query(received()[1].query).click_id)
    end)

    it("survives kill -9 of the firing process: everything is delivered", function()
      local n = under_valgrind and 60 or 400
      -- A child process fires n postbacks at a slow receiver, then is killed.
      mock:fault { fault = "slow", delay = 0.3, times = 100000, match = "/postback" }
      local script = os.tmpname()
      local f = assert(io.open(script, "w"))
      f:write(([[
        local postback = require "postback"
        local d = assert(postback.dispatcher { allow_private = true, spool = %q, concurrency = 8, timeout = 10 })
        for i = 1, %d do assert(d:fire(%q, { click_id = i })) end
        d:poll(0)
        io.write("fired\n") io.flush()
        while true do d:poll(0.05) end
      ]]):format(spool, n, code))
      f:close()
      local lua = require("testenv").lua
      local p = assert(io.popen(("exec sh -c 'echo $$; exec env LUA_PATH=\"$0\" LUA_CPATH=\"$1\" %s %s' '%s' '%s'"):format(
        lua, script, package.path, package.cpath)))
      local pid = tonumber(p:read("*l"))
      assert.equal("fired", p:read("*l"))
      core.sleep(0.5) -- some in flight, some delivered
      os.execute("kill -9 " .. pid)
      p:close()
      os.remove(script)
      mock:control("DELETE", "/_mock/faults")

      local d = assert(postback.dispatcher { allow_private = true, spool = spool, concurrency = 16 })
      assert.is_true(d.recovered > 0)
      assert.is_true(d:wait(30))
      d:close()
      -- the dead process's last requests may still be arriving: counted
      -- here (and never in the next test's count), whatever is asserted next
      local count
      repeat
        count = #received()
        core.sleep(0.5)
      until #received() == count
      local seen, dupes = {}, 0
      for _, g in ipairs(received()) do
        local id = parse_query(g.query).click_id
        if seen[id] then dupes = dupes + 1 end
        seen[id] = true
      end
      for i = 1, n do assert.is_true(seen[tostring(i)], "lost postback " .. i) end
      -- at least once: only what was in flight at the kill may arrive twice
      assert.is_true(dupes <= 8, "duplicates: " .. dupes)
    end)
  end)

  describe("user info", function()
    -- code with u:p@ before the host: sent as "Authorization: Basic dTpw"
    local function with_userinfo(url) return (url:gsub("://", "://u:p@", 1)) end

    local function assert_sent_with_credentials(n)
      local got = received()
      assert.equal(n, #got)
      for _, g in ipairs(got) do assert.equal("Basic dTpw", g.headers.authorization) end
    end

    it("fire_many sends it with allow_userinfo, on the fast path and with headers, each result without it", function()
      local c = with_userinfo(code)
      local items = { { url = c, values = { click_id = 1 } }, { url = c, values = { click_id = 2 } },
                      { url = c, values = { click_id = 3 }, headers = { ["X-Test"] = "1" } } }
      local results = postback.fire_many(items, { allow_private = true, allow_userinfo = true, retries = 0 })
      for i = 1, 3 do
        assert.is_true(results[i].ok, tostring(results[i].error))
        assert.is_nil(results[i].url:find("u:p@", 1, true))
      end
      assert_sent_with_credentials(3)
    end)

    it("the dispatcher's fast path sends it with allow_userinfo and reports its result", function()
      local results = {}
      local d = postback.dispatcher { allow_private = true, allow_userinfo = true, retries = 0,
                                      on_result = function(r) results[#results + 1] = r end }
      assert(d:fire(with_userinfo(code), { click_id = "fast" }))
      assert(d:fire(postback.template(with_userinfo(code)), { click_id = "template" }))
      assert.is_true(d:wait(5))
      d:close()
      assert.equal(2, #results)
      for _, r in ipairs(results) do
        assert.is_true(r.ok, tostring(r.error))
        assert.is_nil(r.url:find("u:p@", 1, true))
      end
      assert.equal(2, d.delivered)
      assert_sent_with_credentials(2)
    end)

    it("the dispatcher sends it with allow_userinfo whatever the path: headers, delay, spool", function()
      local spool = os.tmpname()
      os.remove(spool)
      for _, with_spool in ipairs { false, true } do
        mock:reset()
        local results = {}
        local d = assert(postback.dispatcher { allow_private = true, allow_userinfo = true, retries = 0,
          spool = with_spool and spool or nil, on_result = function(r) results[#results + 1] = r end })
        local c = with_userinfo(code)
        for _, opts in ipairs { {}, { headers = { ["X-Test"] = "1" } }, { delay = 0.01 }, { missing = "keep" } } do
          local id, err = d:fire(c, { click_id = "d" }, opts)
          assert.is_number(id, tostring(err))
        end
        assert.is_true(d:wait(5))
        d:close()
        assert.equal(4, #results)
        for _, r in ipairs(results) do
          assert.is_true(r.ok, tostring(r.error))
          assert.is_nil(r.url:find("u:p@", 1, true))
        end
        assert_sent_with_credentials(4)
      end
      for _, suffix in ipairs { "", ".tmp", ".lock", ".corrupt" } do os.remove(spool .. suffix) end
    end)

    it("is refused without allow_userinfo, nothing sent: fire, fire_many, the dispatcher", function()
      local c = with_userinfo(code)
      local r, err = postback.fire(c, { click_id = 1 }, { allow_private = true })
      assert.is_nil(r)
      assert.equal("invalid_url", err.code)
      local results = postback.fire_many({ c, { url = c, headers = { ["X-Test"] = "1" } } }, { allow_private = true })
      for i = 1, 2 do assert.equal("invalid_url", results[i].error.code) end
      local d = postback.dispatcher { allow_private = true }
      for _, opts in ipairs { {}, { headers = { ["X-Test"] = "1" } }, { delay = 0.01 } } do
        local id, derr = d:fire(c, { click_id = "d" }, opts)
        assert.is_nil(id)
        assert.equal("invalid_url", derr.code)
      end
      d:close()
      assert.equal(0, #received())
    end)
  end)
end)
