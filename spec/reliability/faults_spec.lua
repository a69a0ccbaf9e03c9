-- The fault matrix: every client call x every fault the mock can inject.
-- Each case asserts the outcome (success, or the right error kind), the
-- attempts the retry policy promises (counted at the mock), that a create
-- never happens twice, and that nothing is raised. Then memory stays flat
-- over 10,000 faulted calls.
local postback = require "postback"
local mockproc = require "mockproc"
local testenv = require "testenv"

-- What each fault does to an idempotent call and to a POST (create): see
-- spec/support/fault_matrix.lua.
local FAULTS = require("fault_matrix").FAULTS

describe("reliability: every call x every fault", function()
  local mock, c

  setup(function()
    mock = mockproc.start { network = "rel", api_key = "rel-key" }
    c = assert(postback.client(mock:client_opts { network = "rel", api_key = "rel-key",
      retries = 3, timeout = 0.5, max_body = 1024 * 1024 }))
  end)

  teardown(function()
    c:close()
    mock:stop()
  end)

  local code = "https://t.example/pb?c={click_id}"

  -- The idempotent calls, each with the path it hits; `id` exists before.
  local CALLS = {
    { "get", function(id) return c:get(id) end, "GET", function(id) return "/v1/affiliate_postbacks/" .. id end },
    { "list", function() return c:list { limit = 5 } end, "GET", function() return "/v1/affiliate_postbacks" end },
    { "update", function(id) return c:update(id, { code = code .. "&u=1" }) end, "PUT",
      function(id) return "/v1/affiliate_postbacks/" .. id end },
    { "set_status", function(id) return c:set_status(id, "rejected") end, "PATCH",
      function(id) return "/v1/affiliate_postbacks/" .. id end },
    { "delete", function(id) return c:delete(id) end, "DELETE", function(id) return "/v1/affiliate_postbacks/" .. id end },
    { "offer", function() return c:offer(2) end, "GET", function() return "/v1/offers/2" end },
  }

  local function attempts(method, path)
    local n = 0
    for _, r in ipairs(mock:requests()) do
      if r.method == method and r.path == path then n = n + 1 end
    end
    return n
  end

  for _, f in ipairs(FAULTS) do
    for _, call in ipairs(CALLS) do
      it(call[1] .. " under " .. f.name, function()
        mock:reset()
        mock:seed { count = 1, offer_id = 0, type = 2, code = code }
        local spec = {}
        for k, v in pairs(f.spec) do spec[k] = v end
        spec.method, spec.match = call[3], call[4](1)
        mock:fault(spec)
        local ok, value, err = pcall(call[2], 1)
        assert.is_true(ok, "raised: " .. tostring(value))
        local want = f.idem
        if want.ok then
          assert.is_not_nil(value, tostring(err))
        else
          assert.is_nil(value)
          assert.equal(want.kind, err.kind, tostring(err))
          assert.equal(want.tries, err.attempts)
        end
        assert.equal(want.tries, attempts(call[3], call[4](1)))
      end)
    end

    it("create under " .. f.name .. ": never twice", function()
      mock:reset()
      mock:fault((function()
        local spec = {}
        for k, v in pairs(f.spec) do spec[k] = v end
        spec.method, spec.match = "POST", "/v1/affiliate_postbacks"
        return spec
      end)())
      local ok, pb, err = pcall(c.create, c, { offer_id = 0, affiliate_id = 1, type = 2, code = code })
      assert.is_true(ok, "raised: " .. tostring(pb))
      local want = f.post
      if want.ok then
        assert.is_not_nil(pb, tostring(err))
      else
        assert.is_nil(pb)
        assert.equal(want.kind, err.kind, tostring(err))
        assert.equal(want.tries, err.attempts)
      end
      assert.equal(want.tries, attempts("POST", "/v1/affiliate_postbacks"))
      local settle = want.settle or f.settle
      if settle then require("postback.core").sleep(settle) end
      assert.equal(want.created, mock:stats().postbacks)
    end)
  end

  it("keeps memory flat over 10,000 faulted calls", function()
    local n = testenv.slow and 1000 or 10000
    mock:reset()
    local cl = assert(postback.client(mock:client_opts { network = "rel", api_key = "rel-key", retries = 0 }))
    local function rss_kib()
      local f = io.open("/proc/self/statm")
      if not f then return 0 end
      local pages = tonumber(f:read("*a"):match("^%d+%s+(%d+)"))
      f:close()
      return pages * 4
    end
    local function faulted(count)
      mock:fault { fault = "status", status = 503, times = count }
      for _ = 1, count do
        local v, err = cl:get(1)
        assert.is_nil(v)
        assert.equal(503, err.status)
      end
      mock:control("DELETE", "/_mock/requests")
    end
    faulted(n / 5) -- warm up: caches, pools, the allocator's arenas
    collectgarbage()
    collectgarbage()
    local heap0, rss0 = collectgarbage("count"), rss_kib()
    faulted(n)
    collectgarbage()
    collectgarbage()
    local heap_growth, rss_growth = collectgarbage("count") - heap0, rss_kib() - rss0
    cl:close()
    assert.is_true(heap_growth < 256, ("Lua heap grew by %.0f KiB"):format(heap_growth))
    if not testenv.slow then
      assert.is_true(rss_growth < 4096, ("RSS grew by %d KiB"):format(rss_growth))
    end
  end)
end)
