-- Workers as real processes (`postback worker`) sharing one queue, against
-- a real redis-server (append-only, fsync always) and an nginx receiver
-- that logs the click id of every postback it gets.
local fixtures = require "fixtures"
local redisproc = require "redisproc"
local workerproc = require "workerproc"
local testenv = require "testenv"
local socket = require "socket"

local function nginx_ok()
  local ok = os.execute("command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx")
  return ok == true or ok == 0
end

if not redisproc.available() or not nginx_ok() then
  describe("queue workers as processes", function()
    it("need redis-server and nginx", function() pending("redis-server or nginx is not installed") end)
  end)
  return
end

local postback = require "postback"

describe("queue workers as processes", function()
  local tmp

  setup(function()
    tmp = fixtures.tmpdir()
  end)

  teardown(function()
    os.execute("rm -rf " .. tmp)
  end)

  local function tail(path)
    local f = io.open(path)
    if not f then return "" end
    local s = f:read("*a")
    f:close()
    return s:sub(-2000)
  end

  -- The acceptance run: `lua5.4 bin/postback worker ...` in the 5.4 suite
  -- (each suite runs the workers on its own interpreter).
  it("deliver all 3,000 when a worker and Redis are killed with -9 mid-run, at most 48 twice", function()
    local r = redisproc.start()
    local log = tmp .. "/accept.log"
    local rx = workerproc.receiver(log)
    local pids = {}
    local ok, err = pcall(function()
      local q = assert(postback.queue { redis = r.url, stream = "pbq" })
      for i = 1, 3000 do assert(q:push(rx.url .. "/pb?c={click_id}", { click_id = i })) end
      q:close()
      for i = 1, 3 do
        pids[i] = workerproc.spawn({ "--redis", r.url, "--stream", "pbq", "--concurrency", "16", "--timeout", "2",
                                     "--allow-private" }, ("%s/w%d.log"):format(tmp, i))
      end
      assert.is_true(fixtures.wait_for(function() return workerproc.count_lines(log) >= 800 end, 60),
        "800 not delivered: " .. tail(tmp .. "/w1.log"))
      workerproc.kill(pids[1])
      r:kill()
      r:restart()
      local unique
      local done = fixtures.wait_for(function()
        local _, seen = workerproc.count_lines(log)
        unique = 0
        for _ in pairs(seen) do unique = unique + 1 end
        return unique >= 3000
      end, 120)
      local total, seen = workerproc.count_lines(log)
      if not done then
        local cjson = require "cjson"
        local diag = { xlen = r:cmd("XLEN", "pbq"), pending = r:cmd("XPENDING", "pbq", "postback"),
                       consumers = r:cmd("XINFO", "CONSUMERS", "pbq", "postback"),
                       delayed = r:cmd("ZCARD", "pbq:delayed"), dead = r:cmd("XLEN", "pbq:dead") }
        error(("only %d of 3000 delivered; Redis: %s; worker logs: %s | %s"):format(unique, cjson.encode(diag),
          tail(tmp .. "/w2.log"), tail(tmp .. "/w3.log")))
      end
      for i = 1, 3000 do assert.truthy(seen[tostring(i)], "click " .. i .. " never arrived") end
      assert.is_true(total - 3000 <= 48, ("%d delivered twice"):format(total - 3000))
      -- and the queue is empty once the outcomes are written
      q = assert(postback.queue { redis = r.url, stream = "pbq" })
      assert.is_true(fixtures.wait_for(function()
        local st = q:stats()
        return st and st.ready == 0 and st.pending == 0 and st.delayed == 0 and st.dead == 0
      end, 20))
      q:close()
      io.stderr:write(("\n  [acceptance: %d delivered, %d twice]\n"):format(total, total - 3000))
    end)
    for _, pid in ipairs(pids) do workerproc.kill(pid) end
    rx:stop()
    r:stop()
    assert(ok, err)
  end)

  it("carry 100,000 entries through 4 workers", function()
    local N = testenv.slow and 5000 or 100000
    -- fsync once a second: this one measures throughput; the test above, durability
    local r = redisproc.start { fsync = "everysec" }
    local log = tmp .. "/bulk.log"
    local rx = workerproc.receiver(log)
    local pids = {}
    local ok, err = pcall(function()
      local q = assert(postback.queue { redis = r.url, stream = "bulk" })
      local t0 = socket.gettime()
      for i = 1, N do assert(q:push(rx.url .. "/pb?c={click_id}&x={aff_sub1}", { click_id = i, aff_sub1 = "s" })) end
      local push_s = socket.gettime() - t0
      t0 = socket.gettime()
      for i = 1, 4 do
        pids[i] = workerproc.spawn({ "--redis", r.url, "--stream", "bulk", "--concurrency", "32", "--timeout", "5",
                                     "--allow-private", "--log-max", "1000" }, ("%s/b%d.log"):format(tmp, i))
      end
      local done = fixtures.wait_for(function() return workerproc.count_lines(log) >= N end, testenv.slow and 600 or 150)
      local deliver_s = socket.gettime() - t0
      local total, seen = workerproc.count_lines(log)
      assert.is_true(done, ("%d of %d delivered: %s"):format(total, N, tail(tmp .. "/b1.log")))
      local unique = 0
      for _ in pairs(seen) do unique = unique + 1 end
      assert.equal(N, unique)
      assert.equal(N, total) -- nothing died: nothing twice
      assert.is_true(fixtures.wait_for(function()
        local st = q:stats()
        return st and st.ready == 0 and st.pending == 0
      end, 20))
      -- the delivery log stays capped (MAXLEN ~ keeps whole nodes: a little over)
      assert.is_true(r:cmd("XLEN", "bulk:log") < 1000 + 1000)
      q:close()
      io.stderr:write(("\n  [%d entries: push %.0f/s, delivery through 4 workers %.0f/s]\n"):format(
        N, N / push_s, N / deliver_s))
    end)
    for _, pid in ipairs(pids) do workerproc.kill(pid) end
    rx:stop()
    r:stop()
    assert(ok, err)
  end)
end)
