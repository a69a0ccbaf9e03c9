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
