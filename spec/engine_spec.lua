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
