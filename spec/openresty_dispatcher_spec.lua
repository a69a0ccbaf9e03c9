-- postback.dispatcher inside a real nginx (Debian's nginx + ngx_http_lua):
-- made in init_worker or on first use in a handler, a bounded queue, the
-- same retries, a cap on connections (per worker and per host), and with a
-- spool nothing accepted is lost to a reload: an exiting worker leaves what
-- it did not send in its spool and the next one takes it over.
local fixtures = require "fixtures"
local hostile = require "hostile"
local nginxproc = require "nginxproc"
local ngxlua = require "ngxlua"
local socket = require "socket"
local spool = require "postback.spool"

-- A receiver: 204 at once on /ok, after ?ms= on /slow; it counts the
-- requests it holds at once per port (GET /max?port=P).
local RECEIVER = [[
    access_log logs/recv.log pb;
    location /slow {
      content_by_lua_block {
        local d, port = ngx.shared.conc, ngx.var.server_port
        local now = d:incr(port, 1, 0)
        if now > (d:get("max" .. port) or 0) then d:set("max" .. port, now) end
        ngx.sleep(tonumber(ngx.var.arg_ms or 50) / 1000)
        d:incr(port, -1)
        ngx.exit(204)
      }
    }
    location = /max { access_log off; content_by_lua_block { ngx.say(ngx.shared.conc:get("max" .. ngx.var.arg_port) or 0) } }
    location / { return 204; }
]]

-- The URIs in the receiver's log that start with prefix, with the port
-- each came to: { {port =, uri =}, ... }.
local function received(server, prefix)
  local f = io.open(server.prefix .. "/logs/recv.log")
  local out = {}
  if not f then return out end
  for line in f:lines() do
    local p, uri = line:match("^(%d+) (%S+)")
    if uri and uri:sub(1, #prefix) == prefix then out[#out + 1] = { port = tonumber(p), uri = uri } end
  end
  f:close()
  return out
end

describe("postback.dispatcher inside nginx", function()
  local title, why = ngxlua.skip_reason { suites = { "lua5.4" } }
  if title then it(title, function() pending(why) end) return end

  local recv, port2, bad, n

  setup(function()
    ngxlua.build_luajit()
    port2 = nginxproc.free_port()
    recv = nginxproc.start {
      main = ngxlua.LOAD_MODULES,
      http = "log_format pb '$server_port $request_uri'; lua_shared_dict conc 1m;",
      locations = ("listen 127.0.0.1:%d;\n"):format(port2) .. RECEIVER,
    }
    bad = hostile.start()
    -- few worker_connections: the dispatcher must never run out of them
    n = ngxlua.start {
      worker_connections = 64,
      init_worker = [[
        local postback = require "postback"
        R, ABANDONED = {}, 0
        D = assert(postback.dispatcher { concurrency = 4, grace = 0, allow_private = true, retries = 2,
          backoff_base = 0.05, on_result = function(r)
            R[r.id] = { ok = r.ok, status = r.status, attempts = r.attempts, code = r.error and r.error.code }
            if r.error and r.error.code == "abandoned" then ABANDONED = ABANDONED + 1 end
          end })
      ]],
    }
  end)

  teardown(function()
    if n then n:stop() end
    if bad then bad:stop() end
    if recv then recv:stop() end
  end)

  it("made in init_worker, sends what handlers fire, on its own; poll does nothing, wait waits", function()
    local ids, pending, polled = n:run(([[
      local ids = {}
      for i = 1, 50 do ids[i] = assert(D:fire(%q, { i = i })) end
      return ids, D:pending(), D:poll(0)
    ]]):format(recv.url .. "/a?i={i}"))
    assert.equal(50, #ids)
    assert.is_true(pending > 0 and pending <= 50)
    assert.equal(0, polled)
    local ok, stats = n:run("return D:wait(10), D:stats()")
    assert.is_true(ok)
    assert.equal(0, stats.pending)
    assert.is_true(stats.running)
    assert.equal(50, #received(recv, "/a?"))
    local r = n:run(("return R[%d]"):format(ids[50]))
    assert.is_true(r.ok)
    assert.equal(204, r.status)
    assert.has_error(function() n:run("D:fire(nil)") end)
  end)

  it("is made on first use in a handler too, and runs after that handler ended", function()
    local id = n:run(([[
      LAZY = LAZY or assert(require("postback").dispatcher { concurrency = 2, allow_private = true })
      return LAZY:fire(%q)
    ]]):format(recv.url .. "/lazy"))
    assert.equal(1, id)
    assert.is_true(fixtures.wait_for(function() return #received(recv, "/lazy") == 1 end))
  end)

  it("has a bounded queue: d:fire says queue_full instead of taking what it cannot carry", function()
    local accepted, code, retryable, message, refused = n:run(([[
      local d = assert(require("postback").dispatcher { concurrency = 2, max_queue = 10, allow_private = true })
      FULL = d
      local n, err = 0
      for i = 1, 15 do
        local id, e = d:fire(%q, { i = i })
        if id then n = n + 1 else err = err or e end
      end
      return n, err.code, err.retryable, err.message, d:stats().refused
    ]]):format(recv.url .. "/slow?ms=100&q={i}"))
    assert.equal(10, accepted)
    assert.equal("queue_full", code)
    assert.is_true(retryable)
    assert.truthy(message:find("max_queue = 10", 1, true))
    assert.equal(5, refused)
    assert.is_true(n:run("return FULL:wait(10)"))
    assert.equal(10, #received(recv, "/slow?ms=100&q="))
    assert.equal(11, n:run(("return FULL:fire(%q)"):format(recv.url .. "/after-full")))
  end)

  it("retries by the same policy as everywhere else", function()
    local id = n:run(("return D:fire(%q)"):format(bad.url .. "/flaky/2/x"))
    assert.is_true(n:run("return D:wait(10)"))
    local r = n:run(("return R[%d]"):format(id))
    assert.is_true(r.ok)
    assert.equal(3, r.attempts)
    assert.equal(3, bad:count("/flaky/2/x"))
    -- a refused destination is final at once
    local blocked = n:run(([[
      local got
      local d = require("postback").dispatcher { concurrency = 1, on_result = function(r) got = r end }
      assert(d:fire(%q))
      d:wait(5)
      d:close()
      return got and got.error and got.error.code
    ]]):format(recv.url .. "/blocked"))
    assert.equal("blocked_address", blocked)
    assert.equal(0, #received(recv, "/blocked"))
  end)

  it("sends a URL's user info with allow_userinfo, spool or not, on every path; refuses it without", function()
    local dir = os.tmpname()
    os.remove(dir)
    local url = (bad.url:gsub("://", "://u:p@", 1)) .. "/echo-auth-ok/d"
    local results, id, code = n:run(([[
      local postback = require "postback"
      local out = {}
      for _, spool in ipairs { false, %q } do
        local got = {}
        local d = assert(postback.dispatcher { concurrency = 2, allow_private = true, allow_userinfo = true,
          retries = 0, spool = spool or nil, on_result = function(r) got[#got + 1] = r end })
        for _, opts in ipairs { {}, { headers = { ["X-Test"] = "1" } }, { delay = 0.01 } } do
          assert(d:fire(%q, nil, opts))
        end
        assert(d:wait(5))
        d:close()
        for _, r in ipairs(got) do
          out[#out + 1] = { ok = r.ok, body = r.body, url = r.url, error = r.error and tostring(r.error) }
        end
      end
      local id, err = D:fire(%q) -- D: no allow_userinfo
      return out, id, err and err.code
    ]]):format(dir, url, (url:gsub("/d$", "/refused"))))
    fixtures.run("rm -rf " .. fixtures.sh(dir))
    assert.equal(6, #results)
    for _, r in ipairs(results) do
      assert.is_true(r.ok, r.error)
      assert.truthy(r.body:find("Authorization: Basic dTpw ", 1, true), r.body)
      assert.equal(bad.url .. "/echo-auth-ok/d", r.url)
    end
    assert.equal(6, bad:count("/echo-auth-ok/d"))
    assert.is_nil(id)
    assert.equal("invalid_url", code)
    assert.equal(0, bad:count("/echo-auth-ok/refused"))
  end)

  -- client-side connections to a loopback port, from /proc/net/tcp
  local function connections(port)
    local count = 0
    for _, file in ipairs { "/proc/net/tcp", "/proc/net/tcp6" } do
      local f = io.open(file)
      if f then
        f:read("*l")
        for line in f:lines() do
          local rem, st = line:match("^%s*%d+: %x+:%x+ %x+:(%x+) (%x+)")
          if rem and tonumber(rem, 16) == port and st == "01" then count = count + 1 end
        end
        f:close()
      end
    end
    return count
  end

  it("never holds more connections than its cap, per worker and per host", function()
    n:run(([[
      CAP = assert(require("postback").dispatcher { concurrency = 8, per_host = 3, allow_private = true })
      for i = 1, 60 do
        assert(CAP:fire(%q, { i = i }))
        assert(CAP:fire(%q, { i = i }))
      end
    ]]):format(recv.url .. "/slow?ms=20&c={i}", ("http://127.0.0.1:%d/slow?ms=20&c={i}"):format(port2)))
    local most1, most2, most = 0, 0, 0
    local deadline = socket.gettime() + 15
    repeat
      local c1, c2 = connections(recv.port), connections(port2)
      most1, most2, most = math.max(most1, c1), math.max(most2, c2), math.max(most, c1 + c2)
      socket.sleep(0.005)
    until #received(recv, "/slow?ms=20&c=") >= 120 or socket.gettime() > deadline
    assert.equal(120, #received(recv, "/slow?ms=20&c="))
    -- requests at once at each receiver: per_host
    for _, p in ipairs { recv.port, port2 } do
      local _, body = ngxlua.http(recv.port, "GET", "/max?port=" .. p)
      assert.is_true(tonumber(body) <= 3, ("%s requests at once on port %d"):format(body, p))
    end
    -- sockets open: in use (per_host a host) and kept alive (pool_size = per_host)
    assert.is_true(most1 <= 6 and most2 <= 6, ("%d and %d connections"):format(most1, most2))
    assert.is_true(most <= 8 + 8, most .. " connections")
    assert.truthy(most > 0)
    assert.falsy(n:error_log():find("worker_connections are not enough", 1, true))
  end)

  it("without a spool, reports each postback a reload cuts off", function()
    local ids = n:run(([[
      local ids = {}
      for i = 1, 40 do ids[i] = assert(D:fire(%q, { i = i })) end
      return ids
    ]]):format(recv.url .. "/slow?ms=200&cut={i}"))
    assert.equal(40, #ids)
    socket.sleep(0.3)
    n:reload()
    assert.is_true(fixtures.wait_for(function()
      return select(2, n:error_log():gsub("postbacks not delivered: the worker exited", "")) >= 1
    end))
    -- the old worker reported each one it could not deliver (grace = 0)
    local delivered = #received(recv, "/slow?ms=200&cut=")
    local log = n:error_log()
    local told = tonumber(log:match("(%d+) postbacks not delivered: the worker exited and there is no spool"))
    assert.is_true(delivered < 40, delivered .. " delivered")
    assert.truthy(told)
    assert.is_true(delivered + told >= 40, ("%d delivered, %d reported"):format(delivered, told))
  end)
end)

describe("postback.dispatcher inside nginx, with a spool", function()
  local title, why = ngxlua.skip_reason { suites = { "lua5.4" } }
  if title then it(title, function() pending(why) end) return end

  local recv, n, dir

  local function owed_file(path, urls)
    local sp = assert(spool.open(path))
    for _, url in ipairs(urls) do assert(sp:add { url = url }) end
    assert(sp:close())
    fixtures.run(("chown nobody %s %s.lock 2>/dev/null"):format(path, path))
  end

  setup(function()
    recv = nginxproc.start {
      main = ngxlua.LOAD_MODULES,
      http = "log_format pb '$server_port $request_uri'; lua_shared_dict conc 1m;",
      locations = RECEIVER,
    }
    dir = fixtures.tmpdir()
    fixtures.run("chown nobody " .. dir .. " 2>/dev/null")
    -- left behind: this worker id's own spool, and an orphan of a worker id
    -- past the worker count (a reload from two workers to one)
    owed_file(dir .. "/postback-w0-0.spool", { recv.url .. "/left?own=1", recv.url .. "/left?own=2" })
    owed_file(dir .. "/postback-w1-0.spool", { recv.url .. "/left?orphan=1", recv.url .. "/left?orphan=2",
                                               recv.url .. "/left?orphan=3" })
    n = ngxlua.start {
      init_worker = ([[
        D = assert(require("postback").dispatcher { concurrency = 4, grace = 0.2, allow_private = true,
          spool = %q, sync_interval = 0.02 })
      ]]):format(dir),
    }
  end)

  teardown(function()
    if n then n:stop() end
    if recv then recv:stop() end
    if dir then fixtures.run("rm -rf " .. dir) end
  end)

  it("sends what a worker left in its spool, and takes over the spools nobody holds", function()
    assert.is_true(fixtures.wait_for(function() return #received(recv, "/left?") >= 5 end), n:error_log())
    local stats
    assert.is_true(fixtures.wait_for(function()
      stats = n:run("return D:stats()")
      return stats.pending == 0
    end))
    assert.equal(2, stats.recovered)
    assert.equal(3, stats.adopted)
    assert.equal(dir .. "/postback-w0-0.spool", stats.spool.path)
    assert.equal(0, stats.spool.owed)
  end)

  it("loses nothing it accepted to a reload: the next worker takes over the spool", function()
    local ids = n:run(([[
      local ids = {}
      for i = 1, 200 do ids[i] = assert(D:fire(%q, { i = i })) end
      return ids
    ]]):format(recv.url .. "/slow?ms=40&r={i}"))
    assert.equal(200, #ids)
    socket.sleep(0.3)
    n:reload()
    local got
    assert.is_true(fixtures.wait_for(function()
      got = {}
      local distinct = 0
      for _, r in ipairs(received(recv, "/slow?ms=40&r=")) do
        local i = r.uri:match("r=(%d+)")
        if not got[i] then distinct = distinct + 1 end
        got[i] = (got[i] or 0) + 1
      end
      return distinct == 200
    end, 20), n:error_log())
    -- at least once: only what was in flight when the old worker let go is sent twice
    assert.is_true(#received(recv, "/slow?ms=40&r=") <= 200 + 4)
    local stats
    assert.is_true(fixtures.wait_for(function()
      stats = n:run("return D:stats()")
      return stats.pending == 0 and stats.adopted > 0
    end, 10))
    assert.equal(dir .. "/postback-w0-1.spool", stats.spool.path) -- the old one held w0-0 then
    local log = n:error_log()
    assert.truthy(log:find("left in " .. dir .. "/postback-w0-0.spool", 1, true), log)
    assert.falsy(log:find("[error]", 1, true), log)
    -- nothing owed anywhere once it is all sent
    socket.sleep(0.2) -- the last marks, synced
    for _, name in ipairs { "postback-w0-0.spool", "postback-w0-1.spool", "postback-w1-0.spool" } do
      local owed = {}
      for line in io.lines(dir .. "/" .. name) do
        local sign, id = line:match("^%x+ ([+-])(%d+)")
        if sign then owed[id] = sign == "+" or nil end
      end
      assert.is_nil(next(owed), name .. " still owes " .. tostring(next(owed)))
    end
  end)

  it("loses nothing it accepted to a stop (QUIT): the next start sends it", function()
    local ids = n:run(([[
      local ids = {}
      for i = 1, 100 do ids[i] = assert(D:fire(%q, { i = i })) end
      return ids
    ]]):format(recv.url .. "/slow?ms=40&q={i}"))
    assert.equal(100, #ids)
    socket.sleep(0.2)
    assert.is_true(n:quit(), "nginx did not stop")
    local sent = {}
    for _, r in ipairs(received(recv, "/slow?ms=40&q=")) do sent[r.uri] = true end
    local before = 0
    for _ in pairs(sent) do before = before + 1 end
    assert.is_true(before < 100, before .. " sent before the stop")
    n:start_again()
    assert.is_true(fixtures.wait_for(function()
      for _, r in ipairs(received(recv, "/slow?ms=40&q=")) do sent[r.uri] = true end
      local k = 0
      for _ in pairs(sent) do k = k + 1 end
      return k == 100
    end, 20), n:error_log())
    local stats = n:run("return D:stats()")
    assert.is_true(stats.recovered + stats.adopted > 0)
  end)

  -- Fires 200 at a slow receiver (40 ms each, 4 at a time: 2 s), with tag
  -- in the query.
  local function fire_200(tag)
    local ids = n:run(([[
      local ids = {}
      for i = 1, 200 do ids[i] = assert(D:fire(%q, { i = i })) end
      return ids
    ]]):format(recv.url .. "/slow?ms=40&" .. tag .. "={i}"))
    assert.equal(200, #ids)
  end

  -- Waits until the receiver has all 200 of tag (each at least once, at
  -- most the 4 in flight twice).
  local function assert_all_200(tag)
    local prefix = "/slow?ms=40&" .. tag .. "="
    assert.is_true(fixtures.wait_for(function()
      local got, distinct = {}, 0
      for _, r in ipairs(received(recv, prefix)) do
        if not got[r.uri] then distinct = distinct + 1 end
        got[r.uri] = true
      end
      return distinct == 200
    end, 20), n:error_log())
    assert.is_true(#received(recv, prefix) <= 200 + 4)
  end

  it("loses nothing it accepted to a worker's crash (kill -9): the worker nginx starts again sends it", function()
    fire_200("k")
    socket.sleep(0.3)
    local old = n:workers()
    assert.equal(1, #old)
    assert(fixtures.run("kill -9 " .. old[1]))
    assert.is_true(fixtures.wait_for(function()
      local now = n:workers()
      return #now == 1 and now[1] ~= old[1]
    end), "no new worker")
    assert.is_true(#received(recv, "/slow?ms=40&k=") < 200, "all sent before the crash")
    assert_all_200("k")
    local stats = n:run("return D:stats()")
    assert.is_true(stats.recovered > 0, "recovered " .. stats.recovered)
  end)

  it("loses nothing it accepted to a fast stop (nginx -s stop): the next start sends it", function()
    fire_200("f")
    socket.sleep(0.3)
    assert.is_true(n:quit(true), "nginx did not stop")
    assert.is_true(#received(recv, "/slow?ms=40&f=") < 200, "all sent before the stop")
    n:start_again()
    assert_all_200("f")
    local stats = n:run("return D:stats()")
    assert.is_true(stats.recovered > 0, "recovered " .. stats.recovered)
  end)
end)
