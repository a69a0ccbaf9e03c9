-- A callback that raises never loses a postback or its retries: on_attempt
-- and on_result of the dispatcher, on_result of fire_many and on_progress
-- of c:batch. The run goes on; every postback is still delivered, and
-- retried when its first try fails, as counted at the receiver.
--
-- Whether the call (or d:poll) reports the callback's error by raising
-- after the work is done, or some other way, is not pinned here: only
-- that nothing is lost. The receivers are the hostile server's /ok (204)
-- and /flaky/1/... (503 the first time, then 204); c:batch runs against the
-- mock. Each scenario runs in a child process under a hard limit; the
-- receivers are on loopback, so the firing calls allow private destinations.
local child = require "child"
local hostile = require "hostile"
local mockproc = require "mockproc"

local PRELUDE = [[
local port = ...
local postback = require "postback"
local core = require "postback.core"
local base = "http://127.0.0.1:" .. port
-- Polls d until nothing is pending (at most 10 s), whatever poll raises.
local function drain(d)
  local raised, t0 = 0, core.now()
  while d:pending() > 0 and core.now() - t0 < 10 do
    local ok = pcall(d.poll, d, 0.05)
    if not ok then raised = raised + 1 end
  end
  return raised
end
]]

describe("reliability: a callback that raises loses nothing", function()
  local server, mock

  setup(function()
    server = hostile.start()
    mock = mockproc.start { network = "cb", api_key = "cb-key" }
  end)

  teardown(function()
    if server then server:stop() end
    if mock then mock:stop() end
  end)

  before_each(function() server:reset() end)

  local function run(code, args)
    local r = child.run(PRELUDE .. code, { args = args or { server.port }, limit = 20 })
    assert(not r.timed_out, "the scenario never finished (killed after 20 s)")
    assert(r.raised == nil, "the scenario failed: " .. tostring(r.raised))
    return r.value
  end

  it("dispatcher: on_attempt raising on every try keeps each postback's retry", function()
    local v = run [[
      local results = {}
      local d = postback.dispatcher { allow_private = true, retries = 2, backoff_base = 0.01, backoff_max = 0.02, timeout = 5,
        on_attempt = function(info) error("on_attempt fails for " .. tostring(info.id)) end,
        on_result = function(r) results[#results + 1] = r.ok end }
      for i = 1, 4 do assert(d:fire(base .. "/flaky/1/attempt-" .. i)) end
      local raised = drain(d)
      local left = d:pending()
      d:close()
      return { results = results, left = left, raised = raised }
    ]]
    assert.equal(0, v.left, "postbacks still pending after 10 s")
    for i = 1, 4 do
      assert.equal(2, server:count("/flaky/1/attempt-" .. i),
        "postback " .. i .. " was not retried after its failed first try")
    end
    assert.equal(4, #v.results, "on_result was not called for every postback")
    for i = 1, 4 do assert.is_true(v.results[i]) end
  end)

  it("dispatcher: on_result raising for every postback loses none, and the spool owes nothing after", function()
    local spool = os.tmpname()
    os.remove(spool)
    local v = run([[
      local spool = select(2, ...)
      local calls = 0
      local d = assert(postback.dispatcher { allow_private = true, retries = 2, backoff_base = 0.01, backoff_max = 0.02, timeout = 5,
        spool = spool, concurrency = 2,
        on_result = function(r)
          calls = calls + 1
          error("on_result fails for " .. tostring(r.id))
        end })
      for i = 1, 4 do assert(d:fire(base .. "/ok/result-" .. i)) end
      for i = 1, 2 do assert(d:fire(base .. "/flaky/1/result-" .. i)) end
      local raised = drain(d)
      local left = d:pending()
      d:close()
      local d2 = assert(postback.dispatcher { allow_private = true, spool = spool, timeout = 5 })
      local owed = d2:pending()
      d2:close()
      return { calls = calls, left = left, owed = owed, raised = raised }
    ]], { server.port, spool })
    os.remove(spool)
    assert.equal(0, v.left, "postbacks still pending after 10 s")
    for i = 1, 4 do assert.equal(1, server:count("/ok/result-" .. i), "postback " .. i .. " not delivered once") end
    for i = 1, 2 do assert.equal(2, server:count("/flaky/1/result-" .. i), "flaky postback " .. i .. " not retried") end
    assert.equal(6, v.calls, "on_result was not called for every postback")
    assert.equal(0, v.owed, "the spool still owes delivered postbacks")
  end)

  it("fire_many: on_result raising for the first result does not stop the others", function()
    local v = run [[
      local calls = 0
      local items = {}
      for i = 1, 10 do items[i] = base .. "/ok/many-" .. i end
      for i = 1, 2 do items[#items + 1] = base .. "/flaky/1/many-" .. i end
      local ok, err = pcall(postback.fire_many, items, { allow_private = true, concurrency = 2, retries = 2, backoff_base = 0.01,
        backoff_max = 0.02, timeout = 5,
        on_result = function(r, i)
          calls = calls + 1
          if calls == 1 then error("on_result fails for item " .. i) end
        end })
      return { ok = ok, err = not ok and tostring(err) or nil, calls = calls }
    ]]
    for i = 1, 10 do assert.equal(1, server:count("/ok/many-" .. i), "item " .. i .. " was not sent") end
    for i = 1, 2 do assert.equal(2, server:count("/flaky/1/many-" .. i), "flaky item " .. i .. " was not retried") end
    assert.equal(12, v.calls, "on_result was not called for every item")
  end)

  it("fire_many: on_result raising for items refused before sending (bad headers or URL) loses none", function()
    -- on the fast path, and with per_host (every item then a job)
    for _, per_host in ipairs { "nil", "2" } do
      server:reset()
      local v = run(([[
        local calls = 0
        local items = {}
        for i = 1, 4 do
          items[#items + 1] = base .. "/ok/refused-" .. i
          items[#items + 1] = { url = base .. "/ok/bad-header-" .. i, headers = { ["Bad Name"] = "x" } }
          items[#items + 1] = "ftp://x/" .. i
        end
        local ok, err = pcall(postback.fire_many, items, { allow_private = true, concurrency = 2, retries = 0,
          timeout = 5, per_host = %s,
          on_result = function(r, i)
            calls = calls + 1
            error("on_result fails for item " .. i)
          end })
        return { ok = ok, err = not ok and tostring(err) or nil, calls = calls }
      ]]):format(per_host))
      for i = 1, 4 do
        assert.equal(1, server:count("/ok/refused-" .. i), "item " .. i .. " was not sent (per_host " .. per_host .. ")")
        assert.equal(0, server:count("/ok/bad-header-" .. i))
      end
      assert.equal(12, v.calls, "on_result was not called for every item (per_host " .. per_host .. ")")
    end
  end)

  it("c:batch: on_progress raising does not stop the other operations", function()
    mock:reset()
    local v = run([[
      local url = select(1, ...)
      local c = assert(postback.client { network = "cb", api_key = "cb-key", base_url = url, retries = 0 })
      local ops = {}
      for i = 1, 6 do
        ops[i] = { "create", { offer_id = 2, affiliate_id = 10 + i, type = 2, code = "https://t.example/pb?c={click_id}" } }
      end
      local calls = 0
      local ok, err = pcall(c.batch, c, ops, { concurrency = 2, on_progress = function(done)
        calls = calls + 1
        if done == 1 then error("on_progress fails") end
      end })
      return { ok = ok, err = not ok and tostring(err) or nil, calls = calls }
    ]], { mock.url })
    local created = 0
    for _, r in ipairs(mock:requests()) do
      if r.method == "POST" and r.path == "/v1/affiliate_postbacks" then created = created + 1 end
    end
    assert.equal(6, created, "not every create was sent")
    assert.equal(6, v.calls, "on_progress was not called for every operation")
  end)
end)
