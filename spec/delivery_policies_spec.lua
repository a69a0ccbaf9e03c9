-- Delivery policies of the executor, for fire_many and the dispatcher alike:
-- per-host concurrency and rate, the circuit breaker, retry schedules and
-- stats, against the mock's receiver reached by two host names
-- (127.0.0.1 and localhost: two hosts to the policies).
local postback = require "postback"
local core = require "postback.core"
local mockproc = require "mockproc"
local testenv = require "testenv"

local slack = testenv.slow and 4 or 1

describe("delivery policies", function()
  local mock, a, b

  setup(function()
    mock = mockproc.start {}
    a = mock.url .. "/postback/a?i={i}"
    b = mock.url:gsub("127%.0%.0%.1", "localhost") .. "/postback/b?i={i}"
  end)
  teardown(function() mock:stop() end)
  before_each(function() mock:reset() end)

  local function arrivals(prefix)
    local times = {}
    for _, r in ipairs(mock:received()) do
      if r.path:find(prefix, 1, true) then times[#times + 1] = r.time end
    end
    table.sort(times)
    return times
  end

  -- The most requests that arrived within any window of `w` seconds.
  local function max_within(times, w)
    local best = 0
    for i = 1, #times do
      local n = 0
      for j = i, #times do
        if times[j] - times[i] < w then n = n + 1 end
      end
      if n > best then best = n end
    end
    return best
  end

  it("per_host caps the postbacks in flight to one host, and the others do not wait", function()
    local items = {}
    for i = 1, 8 do
      items[#items + 1] = { url = a .. "&mock_fault=slow&mock_delay=0.3", values = { i = i } }
    end
    for i = 1, 8 do items[#items + 1] = { url = b, values = { i = i } } end
    local t0 = core.now()
    local done_b
    local results = postback.fire_many(items, { concurrency = 16, per_host = 2, allow_private = true,
      retries = 0, timeout = 5 })
    for i = 1, 16 do assert.is_true(results[i].ok, tostring(results[i].error)) end
    local total = core.now() - t0
    -- 8 slow postbacks, 2 at a time: 4 rounds of 0.3 s
    assert.is_true(total >= 1.1, ("took %.2f s"):format(total))
    for i = 9, 16 do
      done_b = math.max(done_b or 0, results[i].time)
      assert.is_true(results[i].time < 0.3 * slack, ("b %d took %.2f s"):format(i, results[i].time))
    end
    -- never more than 2 at host a at once: arrivals come in pairs
    assert.is_true(max_within(arrivals("/postback/a"), 0.2) <= 2)
  end)

  it("per_host_rate spaces the starts to one host", function()
    local items = {}
    for i = 1, 6 do items[i] = { url = a, values = { i = i } } end
    local t0 = core.now()
    local results = postback.fire_many(items, { per_host_rate = 5, allow_private = true, retries = 0 })
    for i = 1, 6 do assert.is_true(results[i].ok) end
    -- 5 a second, one token at a time: the sixth starts about a second later
    assert.is_true(core.now() - t0 >= 0.9, ("took %.2f s"):format(core.now() - t0))
    local times = arrivals("/postback/a")
    assert.equal(6, #times)
    assert.is_true(times[6] - times[1] >= 0.9)
  end)

  it("the circuit breaker pauses a failing host, reports it, and closes once it answers", function()
    -- host a fails 3 times, then answers
    mock:fault { fault = "status", status = 500, times = 3, match = "/postback/a" }
    local changes = {}
    -- one at a time per host, so the breaker sees each outcome before the next start
    local d = postback.dispatcher { retries = 0, allow_private = true, per_host = 1,
      breaker = { failures = 3, cooldown = 0.5, on_change = function(host, state)
        changes[#changes + 1] = { host = host, state = state, t = core.now() }
      end } }
    local t0 = core.now()
    for i = 1, 6 do assert(d:fire(a, { i = i })) end
    for i = 1, 3 do assert(d:fire(b, { i = i })) end
    -- the three failures open the breaker: the rest of host a waits
    local paused_seen = false
    while core.now() - t0 < 0.4 do
      d:poll(0.02)
      if d:stats().paused == 1 then paused_seen = true end
    end
    assert.is_true(paused_seen, "stats().paused never showed the host")
    assert.equal(3, #arrivals("/postback/a"))
    assert.equal(3, #arrivals("/postback/b")) -- the other host is not held
    assert.is_true(d:wait(10 * slack))
    local s = d:stats()
    assert.equal(6, s.delivered) -- 3 of a after the cool-down, 3 of b
    assert.equal(3, s.failed)
    assert.equal(0, s.paused)
    assert.equal("open", changes[1] and changes[1].state)
    assert.equal("closed", changes[2] and changes[2].state)
    assert.truthy(changes[1].host:find("127.0.0.1", 1, true))
    assert.is_true(changes[2].t - changes[1].t >= 0.45)
    d:close()
  end)

  it("retry_schedule sets the waits between attempts", function()
    mock:fault { fault = "status", status = 503, times = 2, match = "/postback/a" }
    local r = assert(postback.fire(a, { i = 1 }, { retry_schedule = { 0.2, 0.4 }, allow_private = true }))
    assert.equal(3, r.attempts)
    local times = arrivals("/postback/a")
    assert.equal(3, #times)
    assert.is_true(times[2] - times[1] >= 0.19, ("first wait %.3f"):format(times[2] - times[1]))
    assert.is_true(times[3] - times[2] >= 0.39, ("second wait %.3f"):format(times[3] - times[2]))
    -- the schedule ends the retries: two entries, at most two retries
    mock:fault { fault = "status", status = 503, times = 5, match = "/postback/a" }
    local _, err = postback.fire(a, { i = 2 }, { retry_schedule = { 0.05, 0.05 }, allow_private = true })
    assert.equal(3, err.attempts)
  end)

  it("the dispatcher's stats count what happened", function()
    mock:fault { fault = "status", status = 500, times = 1, match = "/postback/a" }
    local d = postback.dispatcher { retries = 1, backoff_base = 0.01, allow_private = true }
    for i = 1, 5 do assert(d:fire(a, { i = i })) end
    assert.is_true(d:wait(5 * slack))
    local s = d:stats()
    assert.equal(5, s.delivered)
    assert.equal(0, s.failed)
    assert.equal(1, s.retried)
    assert.equal(0, s.pending)
    assert.equal(0, s.callback_errors)
    d:close()
  end)
end)
