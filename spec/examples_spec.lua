-- Every example runs, as a real process, against the local mock.
local mockproc = require "mockproc"

local testenv = require "testenv"
local lua, suite, slow = testenv.lua, testenv.suite, testenv.slow

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  local ok, _, code = p:close()
  if type(ok) == "number" then code = ok; ok = ok == 0 end -- Lua 5.1
  return out, ok, code
end

-- The module paths of this process, for child processes that need them
-- (the game server embeds Lua and takes them from the environment).
local function env_paths()
  return ("LUA_PATH='%s' LUA_CPATH='%s'"):format(package.path, package.cpath)
end

-- The examples run as the README and the cookbook tell: no module paths in
-- the environment (each example finds the build beside examples/).
local AS_DOCUMENTED = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_PATH_5_3 -u LUA_CPATH_5_3"

describe("examples", function()
  it("make demo: quickstart against the mock, every call, exit 0", function()
    local out, ok = run(AS_DOCUMENTED .. " " .. lua .. " examples/demo.lua")
    assert.is_true(ok, out)
    assert.matches("refused before sending: type 3 %(HTML Pixel%) is not allowed", out)
    assert.matches("page 1/", out)
    assert.matches("set_status %d+ approved %-> approved", out)
    assert.matches("set_status %d+ rejected %-> rejected", out)
    assert.matches("delete %d+, then get: api error, HTTP 404", out)
    assert.matches("fired: HTTP 200", out)
    assert.matches("summary: 9 created, 3 refused", out)
    assert.matches("the receiver got 1 postback", out)
    assert.is_nil(out:find("demo-key", 1, true), "the API key was printed")
  end)

  describe("migrations", function()
    local mock
    setup(function() mock = mockproc.start { network = "ex", api_key = "ex-key" } end)
    teardown(function() mock:stop() end)
    before_each(function() mock:reset() end)

    local function env()
      return ("%s OFFERSLOOK_NETWORK=ex OFFERSLOOK_API_KEY=ex-key OFFERSLOOK_BASE_URL=%s"):format(AS_DOCUMENTED, mock.url)
    end

    local function codes()
      local c = assert(require("postback").client(mock:client_opts { network = "ex", api_key = "ex-key" }))
      local out = {}
      for pb in c:each {} do out[#out + 1] = pb.code end
      c:close()
      return out
    end

    it("moves every postback from one tracking domain to another", function()
      mock:seed { count = 30, offer_id = 0, type = 2, code = "https://old-tracker.example/pb?c={click_id}" }
      mock:seed { count = 5, offer_id = 0, type = 2, code = "https://other.example/pb?c={click_id}" }
      local out, ok = run(env() .. " " .. lua .. " examples/move_domain.lua old-tracker.example new-tracker.example")
      assert.is_true(ok, out)
      assert.matches("30 postbacks read, 30 would move", out)
      out, ok = run(env() .. " " .. lua .. " examples/move_domain.lua old-tracker.example new-tracker.example --apply")
      assert.is_true(ok, out)
      assert.matches("30 moved", out)
      local moved = 0
      for _, code in ipairs(codes()) do
        if code == "https://new-tracker.example/pb?c={click_id}" then moved = moved + 1 end
        assert.is_nil(code:find("old-tracker", 1, true))
      end
      assert.equal(30, moved)
    end)

    it("renames a macro", function()
      mock:seed { count = 12, offer_id = 0, type = 2, code = "https://t.example/pb?c={click_id}&s={aff_sub}" }
      local out, ok = run(env() .. " " .. lua .. " examples/rename_macro.lua aff_sub aff_sub1 --apply")
      assert.is_true(ok, out)
      for _, code in ipairs(codes()) do assert.equal("https://t.example/pb?c={click_id}&s={aff_sub1}", code) end
    end)

    it("run from another directory, by path, as documented", function()
      mock:seed { count = 3, offer_id = 0, type = 2, code = "https://old-tracker.example/pb?c={click_id}" }
      local out, ok = run(("cd examples && %s %s move_domain.lua old-tracker.example new-tracker.example")
        :format(env(), lua))
      assert.is_true(ok, out)
      assert.matches("3 postbacks read, 3 would move", out)
      out, ok = run(("cd /tmp && %s %s %s/examples/move_domain.lua old-tracker.example new-tracker.example")
        :format(env(), lua, mockproc.root()))
      assert.is_true(ok, out)
      assert.matches("3 postbacks read, 3 would move", out)
    end)

    it("round-trips export, edit and import", function()
      mock:seed { count = 8, offer_id = 0, type = 2, code = "http://t.example/pb?c={click_id}" }
      local out, ok = run(env() .. " LUA=" .. lua .. " sh examples/export_edit_import.sh")
      assert.is_true(ok, out)
      assert.matches("exported 8 postbacks", out)
      assert.matches('import: {[^\n]*"updated":8', out)
      assert.matches('again: +{[^\n]*"unchanged":8', out)
      for _, code in ipairs(codes()) do assert.equal("https://t.example/pb?c={click_id}", code) end
    end)
  end)

  it("the OpenResty config needs no resolver line, and the README says how names are resolved", function()
    -- postback resolves names itself inside nginx (spec/openresty_transport_spec.lua
    -- does it against a DNS server of the test, with no resolver directive)
    local f = assert(io.open("examples/openresty/nginx.conf"))
    local conf = f:read("*a")
    f:close()
    local http = assert(conf:match("\nhttp%s*(%b{})"), "no http block")
    assert.falsy(http:match("\n%s*resolver%s"), "a resolver line the gateway does not use")
    assert.truthy(http:find("postback resolves host names itself", 1, true))
    f = assert(io.open("README.md"))
    local readme = f:read("*a")
    f:close()
    local section = assert(readme:match("\n## Using it in OpenResty\n(.-)\n## Layout"))
    for _, what in ipairs { "`resolver` directive", "nginx.dns.resolver", "/etc/resolv.conf", "/etc/hosts", "nameservers" } do
      assert.truthy(section:find(what, 1, true), what)
    end
  end)

  describe("game server", function()
    local mock
    setup(function() mock = mockproc.start {} end)
    teardown(function() mock:stop() end)

    it("fires every conversion from a 60 Hz loop, the library never taking 1 ms of a tick", function()
      if suite ~= "lua5.4" and suite ~= "valgrind" and suite ~= "asan" then
        return pending("the embedding example links Lua 5.4")
      end
      local _, built = run("make -s build/game_server")
      assert.is_true(built)
      local n = slow and 60 or 240
      -- the mock's receiver is on loopback: the game allows it as its README says
      local out, ok = run(("GAME_CONVERSIONS=%d POSTBACK_ALLOW_PRIVATE=1 %s build/game_server examples/game_server/game.lua %s %d")
        :format(n, env_paths(), mock.url, n + 60))
      assert.is_true(ok, out)
      local stats = {}
      for k, v in out:gmatch("(%w+_?%w*_?%w*)=(%d+)") do stats[k] = tonumber(v) end
      assert.equal(n + 60, stats.frames)
      local got = mock:received()
      assert.equal(n, #got)
      local seen = {}
      for _, g in ipairs(got) do seen[g.query:match("click_id=([^&]+)")] = true end
      for i = 1, n do assert.is_true(seen[("c%06d"):format(i)], "missing conversion " .. i) end
      if not slow then
        -- CPU time the library used in any frame (wall time also counts
        -- preemption by other processes on a shared machine)
        assert.is_true(stats.max_cpu_us <= 1000, out)
        assert.is_true(stats.p99_poll_us <= 1000, out)
      end
    end)
  end)
end)
