-- The shared queue and its workers against a real redis-server started
-- here (append-only file, fsync on every write) and the mock receiver.
local redisproc = require "redisproc"
local mockproc = require "mockproc"
local workerproc = require "workerproc"
local testenv = require "testenv"
local socket = require "socket"
local cjson = require("cjson.safe")

if not redisproc.available() then
  describe("the queue", function()
    it("needs redis-server", function() pending("redis-server is not installed") end)
  end)
  return
end

local postback = require "postback"

local function fields(list)
  local t = {}
  for i = 1, #list - 1, 2 do t[list[i]] = list[i + 1] end
  return t
end

-- Polls w until cond() holds (or `limit` seconds pass); returns cond().
local function poll_until(w, cond, limit)
  local deadline = socket.gettime() + (limit or 10) * (testenv.slow and 5 or 1)
  while not cond() and socket.gettime() < deadline do w:poll(0.05) end
  return cond()
end

describe("the queue", function()
  local r, mock, n = nil, nil, 0
  local stream

  setup(function()
    r = redisproc.start()
    mock = mockproc.start()
  end)

  teardown(function()
    mock:stop()
    r:stop()
  end)

  before_each(function()
    n = n + 1
    stream = "q" .. n
    mock:reset()
    mock:control("DELETE", "/_mock/faults")
  end)

  local function url(c) return mock.url .. "/postback?c=" .. c end
  local function received()
    local list = {}
    for _, rec in ipairs(mock:received()) do list[#list + 1] = rec.query end
    return list
  end

  -- Runs bin/postback: its output (stdout and stderr) and exit status.
  local function cli(args)
    local out = os.tmpname()
    local cmd = ("env LUA_PATH=%s LUA_CPATH=%s %s bin/postback %s >%s 2>&1"):format(
      workerproc.shell_quote(package.path), workerproc.shell_quote(package.cpath), testenv.lua, args, out)
    local code = require("fixtures").exit_code(os.execute(cmd))
    local text = assert(require("fixtures").readfile(out))
    os.remove(out)
    return text, code
  end

  local function worker(extra)
    local o = { redis = r.url, stream = stream, concurrency = 8, timeout = 2, allow_private = true,
                move_interval = 0.05 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return assert(postback.worker(o))
  end

  describe("push", function()
    it("renders like fire and adds one self-contained entry", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      local before = os.time()
      local sid = assert(q:push(mock.url .. "/postback?c={click_id}&p={payout}", { click_id = "a b", payout = 1.5 },
        { headers = { ["X-Token"] = "t1" } }))
      assert.matches("^%d+%-%d+$", sid)
      local entries = r:cmd("XRANGE", stream, "-", "+")
      assert.equal(1, #entries)
      assert.equal(sid, entries[1][1])
      local f = fields(entries[1][2])
      assert.equal(mock.url .. "/postback?c=a%20b&p=1.5", f.url)
      assert.equal("0", f.attempt)
      assert.truthy(#f.id > 4)
      assert.is_true(math.abs(tonumber(f.enqueued) / 1000 - before) < 5)
      assert.same({ ["X-Token"] = "t1" }, cjson.decode(f.headers))
      -- the caller's id for dedupe, a template and a record
      assert(q:push(postback.template(mock.url .. "/postback?c={click_id}"), { click_id = "t" }, { id = "mine-1" }))
      assert(q:push({ type = 2, code = mock.url .. "/postback?c={click_id}" }, { click_id = "rec" }))
      local all = r:cmd("XRANGE", stream, "-", "+")
      assert.equal("mine-1", fields(all[2][2]).id)
      assert.equal(mock.url .. "/postback?c=rec", fields(all[3][2]).url)
      local st = assert(q:stats())
      assert.same({ 3, 0, 0, 0 }, { st.ready, st.pending, st.delayed, st.dead })
      assert.is_true(st.oldest_age >= 0 and st.oldest_age < 5)
      q:close()
      q:close()
    end)

    it("refuses what fire refuses, before anything is added", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      local id, err = q:push("ftp://x.example/pb")
      assert.is_nil(id)
      assert.equal("validation", err.kind)
      id, err = q:push({ type = 3, code = "<img src=x>" })
      assert.is_nil(id)
      assert.equal("type_not_allowed", err.code)
      id, err = q:push("https://x.example/pb", nil, { headers = { ["X-A"] = "a\r\nInjected: 1" } })
      assert.is_nil(id)
      assert.equal("validation", err.kind)
      assert.has_error(function() q:push(42) end, "bad argument #1 to 'push' (URL, template or record expected, got number)")
      assert.has_error(function() q:push("https://x.example", 5) end)
      assert.equal(0, r:cmd("XLEN", stream))
      q:close()
    end)

    it("blames a bad argument on the line that called", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      local function blames(f, line)
        local ok, err = pcall(f)
        assert.is_false(ok)
        assert.matches("queue_spec%.lua:" .. line .. ": bad argument #%d to '%a+'", err)
      end
      local u = "https://x.example/pb"
      blames(function() q:push(42) end, debug.getinfo(1, "l").currentline)
      blames(function() q:push(u, 5) end, debug.getinfo(1, "l").currentline)
      blames(function() q:push(u, nil, { id = "" }) end, debug.getinfo(1, "l").currentline)
      blames(function() q:push(u, nil, { headers = 1 }) end, debug.getinfo(1, "l").currentline)
      blames(function() q:dead(5) end, debug.getinfo(1, "l").currentline)
      blames(function() q:dead { count = 0 } end, debug.getinfo(1, "l").currentline)
      blames(function() q:replay(5) end, debug.getinfo(1, "l").currentline)
      blames(function() q:purge(5) end, debug.getinfo(1, "l").currentline)
      blames(function() q:log(5) end, debug.getinfo(1, "l").currentline)
      blames(function() postback.queue(5) end, debug.getinfo(1, "l").currentline)
      blames(function() postback.queue { redis = r.url, timeout = -1 } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker(5) end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, concurrency = 0 } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, retry_schedule = 5 } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, claim_idle = 1 } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, on_result = 1 } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, consumer = "" } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, metrics = 1 } end, debug.getinfo(1, "l").currentline)
      blames(function() postback.worker { redis = r.url, log_max = math.huge } end, debug.getinfo(1, "l").currentline)
      assert.has_error(function() postback.worker { redis = r.url, log_max = 2 ^ 60 } end,
        "bad argument #1 to 'worker' (option log_max must be at most 2^53 entries)")
      q:close()
    end)

    it("checks the count of dead and log alike", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      for _, name in ipairs { "dead", "log" } do
        for _, count in ipairs { "x", 0, -1, 0 / 0, math.huge, 2 ^ 60 } do
          assert.has_error(function() q[name](q, { count = count }) end,
            ("bad argument #1 to '%s' (option count must be a positive number)"):format(name))
        end
        assert.same({}, assert(q[name](q, { count = 1.5 })))
      end
      q:close()
    end)

    it("raises for every call after close", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      assert(q:push("https://x.example/pb"))
      q:close()
      for _, call in ipairs {
        function() q:push("https://x.example/pb") end, function() q:stats() end, function() q:dead() end,
        function() q:replay() end, function() q:replay { "1-1" } end, function() q:purge() end,
        function() q:purge { "1-1" } end, function() q:log() end,
      } do
        assert.has_error(call, "queue is closed")
      end
    end)

    it("answers nil, err for a bad URL, an unreachable or a silent Redis, within its timeout", function()
      local q, err = postback.queue { redis = "http://127.0.0.1:1" }
      assert.is_nil(q)
      assert.equal("validation", err.kind)
      assert.has_error(function() postback.queue { stream = "x" } end)
      q = assert(postback.queue { redis = ("redis://127.0.0.1:%d/0"):format(redisproc.free_port()) })
      local id, perr = q:push("https://x.example/pb")
      assert.is_nil(id)
      assert.equal("transport", perr.kind)
      q:close()
      q = assert(postback.queue { redis = r.url, stream = stream, timeout = 0.3 })
      assert(q:push("https://x.example/pb"))
      r:pause()
      local t0 = socket.gettime()
      id, perr = q:push("https://x.example/pb")
      local took = socket.gettime() - t0
      r:resume()
      assert.is_nil(id)
      assert.equal("timeout", perr.kind)
      assert.is_true(took < 2, "push waited " .. took .. " s")
      -- and the next push works again, on a new connection
      assert(q:push("https://x.example/pb"))
      q:close()
    end)
  end)

  describe("a worker", function()
    it("delivers every entry once and acknowledges it (XACK, XDEL)", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      for i = 1, 50 do assert(q:push(url("d" .. i))) end
      local results = {}
      local w = worker { on_result = function(res) results[#results + 1] = res end }
      assert.is_true(poll_until(w, function() return w:stats().delivered == 50 end))
      assert.is_true(poll_until(w, function() return w:stats().unacked == 0 end))
      local got = received()
      assert.equal(50, #got)
      local seen = {}
      for _, qs in ipairs(got) do seen[qs] = true end
      for i = 1, 50 do assert.is_true(seen["c=d" .. i]) end
      assert.equal(0, r:cmd("XLEN", stream))
      local st = assert(q:stats())
      assert.same({ 0, 0, 0, 0 }, { st.ready, st.pending, st.delayed, st.dead })
      assert.equal("delivered", results[1].outcome)
      assert.equal(1, results[1].attempt)
      assert.equal(200, results[1].status)
      -- the delivery log: one entry per attempt
      local log = assert(q:log { count = 100 })
      assert.equal(50, #log)
      assert.equal("delivered", log[1].outcome)
      assert.equal(200, log[1].status)
      assert.equal(w.consumer, log[1].worker)
      w:close()
      q:close()
    end)

    it("logs and reports URLs whole, without their user info only", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      local plain = mock.url .. "?c=at&email=a@b.com"
      assert(q:push(plain))
      -- user info is refused by push, but any client can add such an entry
      r:cmd("XADD", stream, "*", "url", mock.url:gsub("//", "//u:secret@") .. "/postback?c=ui", "attempt", "0")
      local results = {}
      local w = worker { on_result = function(res) results[#results + 1] = res end }
      assert.is_true(poll_until(w, function() return #results == 2 and w:stats().unacked == 0 end))
      local urls = {}
      for _, res in ipairs(results) do urls[#urls + 1] = res.url end
      table.sort(urls)
      local want = { mock.url .. "/postback?c=ui", plain }
      table.sort(want)
      assert.same(want, urls)
      urls = {}
      for _, e in ipairs(assert(q:log())) do urls[#urls + 1] = e.url end
      table.sort(urls)
      assert.same(want, urls)
      w:close()
      q:close()
    end)

    it("never blocks in poll(0): Redis down, silent, or answering", function()
      local port = redisproc.free_port()
      local w = assert(postback.worker { redis = ("redis://127.0.0.1:%d"):format(port), stream = stream,
                                          timeout = 2, allow_private = true })
      local worst = 0
      local function timed(rounds)
        for _ = 1, rounds do
          local t0 = socket.gettime()
          w:poll(0)
          worst = math.max(worst, socket.gettime() - t0)
          socket.sleep(0.002)
        end
      end
      timed(100) -- nothing listens: connects are refused, retried with backoff
      assert.is_false(w:stats().connected)
      assert.truthy(w:stats().last_error)
      w:close()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      for i = 1, 20 do assert(q:push(url("nb" .. i))) end
      w = worker { redis_timeout = 1 }
      timed(200) -- connected, delivering
      r:pause()
      timed(300) -- a server that answers nothing
      r:resume()
      timed(50)
      if not testenv.slow then assert.is_true(worst < 0.02, ("poll(0) took %.4f s"):format(worst)) end
      w:close()
      q:close()
    end)

    it("retries through the delayed set, on its schedule, and survives its own death", function()
      mock:fault { fault = "status", status = 503, match = "c=r1", times = 2 }
      local q = assert(postback.queue { redis = r.url, stream = stream })
      assert(q:push(url("r1")))
      local results = {}
      local w = worker { retry_schedule = { 0.2, 0.2 }, on_result = function(res) results[#results + 1] = res end }
      assert.is_true(poll_until(w, function() return #results >= 1 end))
      assert.equal("retry", results[1].outcome)
      assert.is_true(poll_until(w, function() return w:stats().unacked == 0 end))
      assert.equal(1, r:cmd("ZCARD", stream .. ":delayed"))
      -- the worker dies here; the retry lives on in Redis
      w:close()
      w = worker { retry_schedule = { 0.2, 0.2 }, on_result = function(res) results[#results + 1] = res end }
      assert.is_true(poll_until(w, function() return w:stats().delivered == 1 end))
      assert.same({ "retry", "retry", "delivered" }, { results[1].outcome, results[2].outcome, results[3].outcome })
      assert.equal(3, results[3].attempt)
      assert.equal(3, #received())
      assert.is_true(poll_until(w, function() return w:stats().unacked == 0 end))
      local st = assert(q:stats())
      assert.same({ 0, 0, 0, 0 }, { st.ready, st.pending, st.delayed, st.dead })
      w:close()
      q:close()
    end)

    it("dead-letters after the last attempt; postback dlq lists, replays and purges", function()
      mock:fault { fault = "status", status = 503, match = "c=x1", times = 3 }
      mock:fault { fault = "status", status = 404, match = "c=x2", times = 1 }
      local q = assert(postback.queue { redis = r.url, stream = stream })
      assert(q:push(url("x1"), nil, { id = "dedupe-x1" }))
      assert(q:push(url("x2")))
      assert(q:push(url("x3")))
      local w = worker { retry_schedule = { 0.1, 0.1 } }
      assert.is_true(poll_until(w, function() return w:stats().dead == 2 and w:stats().unacked == 0 end))
      assert.equal(1, w:stats().delivered)
      assert.equal(2, w:stats().retried) -- x1 twice; x2's 404 is final at once
      local dead = assert(q:dead())
      assert.equal(2, #dead)
      local by = {}
      for _, e in ipairs(dead) do by[e.url:match("c=(%w+)")] = e end
      assert.equal(3, by.x1.attempt)
      assert.equal(503, by.x1.status)
      assert.equal("dedupe-x1", by.x1.id)
      assert.equal(1, by.x2.attempt)
      assert.equal(404, by.x2.status)
      assert.truthy(by.x2.error)

      local base = ("--redis %s --stream %s"):format(r.url, stream)
      local text, code = cli("dlq list " .. base)
      assert.equal(0, code)
      local lines = {}
      for line in text:gmatch("[^\n]+") do lines[#lines + 1] = assert(cjson.decode(line)) end
      assert.equal(2, #lines)
      -- replay one by id, the rest by default; the receiver is healthy now
      text, code = cli(("dlq replay %s --id %s"):format(base, by.x1.sid))
      assert.equal(0, code)
      assert.equal("replayed 1\n", text)
      assert.is_true(poll_until(w, function() return w:stats().delivered == 2 end))
      text, code = cli("dlq purge " .. base)
      assert.equal(2, code)
      assert.matches("needs %-%-id", text)
      text, code = cli("dlq purge --all " .. base)
      assert.equal(0, code)
      assert.equal("purged 1\n", text)
      text, code = cli("dlq list " .. base .. " --bogus")
      assert.equal(2, code)
      assert.equal("postback: unknown option --bogus (postback dlq --help)\n", text)
      text, code = cli("worker --redis " .. r.url .. " --concurrency")
      assert.equal(2, code)
      assert.equal(1, select(2, text:gsub("\n", "")))
      text, code = cli("worker --redis " .. r.url .. " --timeout 10 --claim-idle 12")
      assert.equal(2, code)
      assert.matches("claim%-idle", text)
      w:close()
      q:close()
    end)

    -- Between the worker and Redis, a proxy that lets a write of outcomes
    -- (the FLUSH script, with a dead letter) reach Redis and run, then
    -- cuts the connection before its reply: the worker cannot know it was
    -- applied. The next try must not apply it again: each dead letter
    -- once, each delivery once, nothing left pending.
    it("applies a write of outcomes once when Redis ran it and the reply was lost", function()
      local cuts = 2
      local listener = assert(socket.bind("127.0.0.1", 0))
      listener:settimeout(0)
      local _, lport = listener:getsockname()
      local pairs_ = {} -- {client, server, buf (client bytes not yet forwarded)}
      -- the length of the first whole RESP command in buf (an array of bulk strings), or nil
      local function command_len(buf)
        local count, i = buf:match("^%*(%d+)\r\n()")
        if not count then return nil end
        for _ = 1, tonumber(count) do
          local len, j = buf:match("^%$(%d+)\r\n()", i)
          if not len then return nil end
          i = j + tonumber(len) + 2
          if i - 1 > #buf then return nil end
        end
        return i - 1
      end
      local function pump()
        local c = listener:accept()
        if c then
          local up = assert(socket.connect("127.0.0.1", r.port))
          c:settimeout(0)
          up:settimeout(0)
          pairs_[#pairs_ + 1] = { client = c, server = up, buf = "" }
        end
        local keep = {}
        for _, pr in ipairs(pairs_) do
          local alive = true
          local data, err, partial = pr.client:receive(65536)
          data = data or partial
          if err == "closed" then alive = false end
          pr.buf = pr.buf .. (data or "")
          while alive do
            local len = command_len(pr.buf)
            if not len then break end
            local cmd = pr.buf:sub(1, len)
            pr.buf = pr.buf:sub(len + 1)
            pr.server:settimeout(5)
            assert(pr.server:send(cmd))
            pr.server:settimeout(0)
            -- a write of outcomes that holds a dead letter
            if cuts > 0 and cmd:find("XACK", 1, true) and cmd:find('"k":"d"', 1, true) then
              cuts = cuts - 1
              socket.sleep(0.2) -- Redis runs it; its reply is never passed on
              alive = false
            end
          end
          if alive then
            data, err, partial = pr.server:receive(65536)
            data = data or partial
            if err == "closed" then alive = false end
            if data and #data > 0 then
              pr.client:settimeout(5)
              assert(pr.client:send(data))
              pr.client:settimeout(0)
            end
          end
          if alive then keep[#keep + 1] = pr else pr.client:close() pr.server:close() end
        end
        pairs_ = keep
      end
      local q = assert(postback.queue { redis = r.url, stream = stream })
      for i = 1, 10 do assert(q:push(url("ok" .. i))) end
      for i = 1, 5 do assert(q:push(url("bad" .. i) .. "&mock_fault=status&mock_status=404")) end
      local w = worker { redis = ("redis://127.0.0.1:%d/0"):format(lport), retries = 0 }
      local deadline = socket.gettime() + (testenv.slow and 60 or 20)
      repeat
        w:poll(0.005)
        pump()
        local st = w:stats()
      until (cuts == 0 and st.delivered + st.dead >= 15 and st.unacked == 0)
        or socket.gettime() > deadline
      assert.equal(0, cuts, "the proxy never cut a write of outcomes")
      w:close()
      listener:close()
      for _, pr in ipairs(pairs_) do pr.client:close() pr.server:close() end
      local st = assert(q:stats())
      assert.same({ 0, 0, 0, 5 }, { st.ready, st.pending, st.delayed, st.dead })
      assert.equal(5, #assert(q:dead()))
      assert.equal(0, r:cmd("XLEN", stream))
      local oks = 0
      for _, qs in ipairs(received()) do
        if qs:find("^c=ok") then oks = oks + 1 end
      end
      assert.equal(10, oks)
      q:close()
    end)

    it("creates the group again when Redis lost it (NOGROUP)", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      assert(q:push(url("g1")))
      local w = worker()
      assert.is_true(poll_until(w, function() return w:stats().delivered == 1 end))
      r:cmd("XGROUP", "DESTROY", stream, "postback")
      assert(q:push(url("g2")))
      assert.is_true(poll_until(w, function() return w:stats().delivered == 2 end))
      r:cmd("FLUSHALL")
      assert(q:push(url("g3")))
      assert.is_true(poll_until(w, function() return w:stats().delivered == 3 end))
      assert.equal(3, #received())
      w:close()
      q:close()
    end)

    it("keeps retrying an unreachable Redis, and loses nothing it holds while Redis is away", function()
      local port = redisproc.free_port()
      local w = worker { redis = ("redis://127.0.0.1:%d/0"):format(port), redis_timeout = 1, timeout = 5 }
      local t0 = socket.gettime()
      while socket.gettime() - t0 < 1 do w:poll(0.05) end
      assert.is_false(w:stats().connected)
      local r2 = redisproc.start { port = port }
      finally(function() r2:stop() end)
      local q = assert(postback.queue { redis = r2.url, stream = stream })
      -- slow answers: the attempts are in flight when Redis dies
      for i = 1, 3 do assert(q:push(url("h" .. i) .. "&mock_fault=slow&mock_delay=0.4")) end
      assert.is_true(poll_until(w, function() return w:stats().in_flight == 3 end))
      r2:kill()
      assert.is_true(poll_until(w, function() return w:stats().delivered == 3 end))
      assert.equal(3, w:stats().unacked) -- outcomes held in memory
      r2:restart()
      assert.is_true(poll_until(w, function() return w:stats().unacked == 0 end))
      local st = assert(q:stats())
      assert.same({ 0, 0, 0, 0 }, { st.ready, st.pending, st.delayed, st.dead })
      assert.equal(3, #received()) -- each exactly once
      assert.is_true(w:stats().reconnects >= 1)
      w:close()
      q:close()
    end)

    it("keeps the entries it holds from looking idle to other workers", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      assert(q:push(url("k1") .. "&mock_fault=slow&mock_delay=4.5"))
      -- claim_idle 10 s: entries held longer than 10/3 s are touched
      local w = worker { timeout = 5, claim_idle = 10 }
      assert.is_true(poll_until(w, function() return w:stats().in_flight == 1 end))
      local t0 = socket.gettime()
      while socket.gettime() - t0 < 4.2 do w:poll(0.05) end
      assert.equal(1, w:stats().in_flight)
      local p = r:cmd("XPENDING", stream, "postback", "-", "+", "10")
      assert.equal(1, #p)
      assert.equal(w.consumer, p[1][2])
      assert.is_true(p[1][3] < 2500, "idle " .. p[1][3] .. " ms: never touched")
      assert.equal(1, p[1][4]) -- touching does not count as a delivery
      assert.is_true(poll_until(w, function() return w:stats().delivered == 1 end))
      w:close()
      q:close()
    end)

    it("forgets consumers long gone that hold nothing", function()
      local qc = require "postback.queue_conn"
      local q = assert(postback.queue { redis = r.url, stream = stream })
      assert(q:push(url("p1")))
      r:cmd("XGROUP", "CREATE", stream, "postback", "0")
      r:cmd("XGROUP", "CREATECONSUMER", stream, "postback", "gone-1")
      r:cmd("XGROUP", "CREATECONSUMER", stream, "postback", "me")
      r:cmd("XREADGROUP", "GROUP", "postback", "gone-2", "COUNT", "1", "STREAMS", stream, ">") -- holds one
      socket.sleep(0.05)
      assert.equal(1, q.conn:eval_call(qc.PRUNE, { stream }, { "postback", "me", 20 }))
      local names = {}
      for _, c in ipairs(r:cmd("XINFO", "CONSUMERS", stream, "postback")) do names[#names + 1] = c[2] end
      table.sort(names)
      assert.same({ "gone-2", "me" }, names)
      q:close()
    end)

    it("serves its metrics as Prometheus text", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      for i = 1, 5 do assert(q:push(url("m" .. i))) end
      local port = redisproc.free_port()
      local w = worker { metrics = "127.0.0.1:" .. port, stats_interval = 0.1, block = 0.1 }
      assert.is_true(poll_until(w, function() return w:stats().delivered == 5 end))
      poll_until(w, function() return false end, 0.3)
      local text = w:metrics()
      assert.matches('postback_delivered_total{stream="' .. stream .. '"} 5', text, 1, true)
      assert.matches('postback_queue_depth{stream="' .. stream .. '",state="ready"} 0', text, 1, true)
      assert.matches("# TYPE postback_attempt_seconds histogram", text, 1, true)
      assert.matches('postback_attempt_seconds_count{stream="' .. stream .. '",host="127.0.0.1:' .. mock.port .. '"} 5',
        text, 1, true)
      for _, name in ipairs { "postback_failed_total", "postback_retried_total", "postback_dead_lettered_total",
                              "postback_in_flight", "postback_queue_oldest_age_seconds" } do
        assert.matches(name, text, 1, true)
      end
      -- over HTTP, served from poll without blocking it
      local c = assert(socket.connect("127.0.0.1", port))
      c:send("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
      c:settimeout(0)
      local parts = {}
      poll_until(w, function()
        local data, err, partial = c:receive("*a")
        parts[#parts + 1] = data or partial
        return err == "closed" or data ~= nil
      end, 5)
      c:close()
      local body = table.concat(parts)
      assert.matches("^HTTP/1.1 200 OK", body)
      assert.matches('postback_delivered_total{stream="' .. stream .. '"} 5', body, 1, true)
      w:close()
      q:close()
    end)

    it("refuses to run inside nginx, and says what to do", function()
      local saved = rawget(_G, "ngx")
      rawset(_G, "ngx", { get_phase = function() return "timer" end })
      local ok, err = pcall(postback.worker, { redis = r.url })
      local qok, qerr = pcall(postback.queue, { redis = r.url })
      rawset(_G, "ngx", saved)
      assert.is_false(ok)
      assert.matches("lua%-resty%-redis", err)
      assert.is_false(qok)
      assert.matches("outside nginx", qerr)
    end)

    it("checks its options", function()
      assert.has_error(function() postback.worker() end)
      assert.has_error(function() postback.worker { redis = r.url, concurrency = 0 } end)
      assert.has_error(function() postback.worker { redis = r.url, timeout = 10, claim_idle = 12 } end,
        "bad argument #1 to 'worker' (option claim_idle must be at least timeout + 5 s (15 s): "
        .. "a shorter one reclaims entries still being delivered, and delivers them twice)")
      assert.has_error(function() postback.worker { redis = r.url, retry_schedule = { "x" } } end)
      local w, err = postback.worker { redis = "redis://" }
      assert.is_nil(w)
      assert.equal("validation", err.kind)
    end)
  end)

  describe("dead letters", function()
    -- A dead letter as a worker writes it: its stream id.
    local function dead_letter(c)
      return r:cmd("XADD", stream .. ":dead", "*", "url", url(c), "id", c, "attempt", "3", "enqueued", "1",
                   "status", "503", "error", "HTTP 503", "worker", "w1", "failed_at", "2")
    end

    it("counts every dead letter a purge of all deletes, one a worker adds meanwhile too", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      dead_letter("p1")
      dead_letter("p2")
      -- a worker dead-letters one more as soon as the purge has had its first answer
      local call, added = q.conn.call, false
      q.conn.call = function(...)
        local v, err = call(...)
        if not added then
          added = true
          dead_letter("p3")
        end
        return v, err
      end
      local purged = assert(q:purge())
      -- each of the three was either counted and deleted, or is still there
      assert.equal(3, purged + r:cmd("XLEN", stream .. ":dead"))
      q:close()
    end)

    it("replays an id given twice once; the command line exits 1 for ids that are not dead letters", function()
      local q = assert(postback.queue { redis = r.url, stream = stream })
      local a = dead_letter("a")
      assert.equal(1, q:replay { a, a })
      assert.equal(1, r:cmd("XLEN", stream))
      assert.equal(0, r:cmd("XLEN", stream .. ":dead"))
      local base = ("--redis %s --stream %s"):format(r.url, stream)
      local b = dead_letter("b")
      local text, code = cli(("dlq replay %s --id %s --id %s"):format(base, b, b))
      assert.equal(0, code, text)
      assert.equal("replayed 1\n", text)
      assert.equal(2, r:cmd("XLEN", stream))
      text, code = cli("dlq replay " .. base .. " --id 1-1")
      assert.equal(1, code, text)
      assert.truthy(text:find("replayed 0\n", 1, true), text)
      assert.truthy(text:find("postback: 1 of 1 id is not a dead letter\n", 1, true), text)
      local c = dead_letter("c")
      text, code = cli(("dlq purge %s --id %s --id 1-1 --id %s --id 1-2"):format(base, c, c))
      assert.equal(1, code, text)
      assert.truthy(text:find("purged 1\n", 1, true), text)
      assert.truthy(text:find("postback: 2 of 3 ids are not dead letters\n", 1, true), text)
      assert.equal(0, r:cmd("XLEN", stream .. ":dead"))
      text, code = cli("dlq purge " .. base .. " --id 1-1")
      assert.equal(1, code, text)
      assert.equal(2, r:cmd("XLEN", stream))
      q:close()
    end)
  end)
end)
