-- The OpenResty gateway under load, laid out as the README says: bursts of
-- 3,000 conversions (3 approved postbacks each, to a loopback nginx that
-- answers 204 and logs them) from 16 and 64 clients, and from 32 with a
-- reload (HUP) halfway (as fast as they go, and paced so that the reload
-- lands while conversions still come in and postbacks are still queued).
-- Then 64 clients against a small queue and a slow receiver: 503s with
-- Retry-After. Every conversion answered 202 has all 3 postbacks
-- at the receiver; every other request got a 503 (or 429) and nothing was
-- sent for it; no request went unanswered (a request on a kept-alive
-- connection that nginx closed at the reload, never read, is sent again as
-- HTTP clients do, and counted); nginx never ran out of
-- worker_connections (here 256 a worker, for 64 clients). The rate is
-- printed as a ratio to the same nginx serving /health to the same clients.
local gatewayproc = require "gatewayproc"
local mockproc = require "mockproc"
local nginxproc = require "nginxproc"
local ngxlua = require "ngxlua"
local socket = require "socket"
local testenv = require "testenv"

local TOTAL = testenv.slow and 600 or 3000
local HALF = math.floor(TOTAL / 2)

describe("the OpenResty gateway under load", function()
  local title, why = ngxlua.skip_reason { suites = { "lua5.4" } }
  if title then it(title, function() pending(why) end) return end

  local recv, mock, gw, tight
  local postback = require "postback"

  setup(function()
    ngxlua.build_luajit()
    recv = nginxproc.start {
      main = ngxlua.LOAD_MODULES,
      http = "log_format pb '$arg_click_id $arg_aff';",
      locations = [[
        access_log logs/pb.log pb;
        location /pb { return 204; }
        location /slowpb { content_by_lua_block { ngx.sleep(0.02) ngx.exit(204) } }
        location / { access_log off; return 204; }
      ]],
    }
    mock = mockproc.start { network = "gw", api_key = "gw-key" }
    local c = assert(postback.client(mock:client_opts()))
    for aff = 1, 3 do
      assert(c:create { offer_id = 1, affiliate_id = aff, type = 2,
                        code = recv.url .. "/pb?click_id={click_id}&aff={aff_id}" })
      assert(c:create { offer_id = 2, affiliate_id = aff, type = 2,
                        code = recv.url .. "/slowpb?click_id={click_id}&aff={aff_id}" })
    end
    c:close()
    local env = { OFFERSLOOK_NETWORK = "gw", OFFERSLOOK_API_KEY = "gw-key", OFFERSLOOK_BASE_URL = mock.url,
                  POSTBACK_ALLOW_PRIVATE = "1" }
    local function few_connections(conf)
      return (conf:gsub("worker_connections %d+;", "worker_connections 256;"))
    end
    gw = gatewayproc.start { env = env, edit = few_connections }
    -- the same with a small queue, against a receiver that takes 20 ms
    tight = gatewayproc.start { env = env, edit = few_connections,
      app_edit = function(src) return (src:gsub("local MAX_QUEUE = %d+", "local MAX_QUEUE = 300")) end }
  end)

  teardown(function()
    if tight then tight:stop() end
    if gw then gw:stop() end
    if mock then mock:stop() end
    if recv then recv:stop() end
  end)

  -- Runs the load generator (LuaJIT): its summary and {i = status}.
  local function burst(g, path, clients, extra)
    local out = os.tmpname()
    local cmd = ("luajit spec/support/loadgen.lua --port %d --path '%s' --total %d --clients %d --out %s %s")
      :format(g.port, path, TOTAL, clients, out, extra or "")
    local p = assert(io.popen(cmd))
    local summary = require("cjson.safe").decode(p:read("*a"))
    p:close()
    local statuses = {}
    for line in io.lines(out) do
      local i, st = line:match("^(%d+) (%S+)")
      statuses[tonumber(i)] = tonumber(st) or st
    end
    os.remove(out)
    return assert(summary, "the load generator failed"), statuses
  end

  local function received()
    local got = {}
    for line in io.lines(recv.prefix .. "/logs/pb.log") do
      local click, aff = line:match("^(%S+) (%S+)")
      if click then
        got[click] = got[click] or {}
        got[click][aff] = true
      end
    end
    return got
  end

  -- Checks one burst: every 202 delivered, nothing for the others, every
  -- request answered. Returns accepted, rejected.
  local function check(tag, statuses, summary, g)
    local accepted, rejected, missing, extra
    local deadline = socket.gettime() + 30
    while true do
      local got = received()
      accepted, rejected, missing, extra = 0, 0, {}, {}
      for i = 1, TOTAL do
        local st, p = statuses[i], got[tag .. i]
        if st == 202 then
          accepted = accepted + 1
          if not (p and p["1"] and p["2"] and p["3"]) then missing[#missing + 1] = tag .. i end
        else
          assert(st == 503 or st == 429, ("request %d: %s"):format(i, tostring(st)))
          rejected = rejected + 1
          if p then extra[#extra + 1] = tag .. i end
        end
      end
      if #missing == 0 or socket.gettime() > deadline then break end
      socket.sleep(0.1)
    end
    assert.equal(0, summary.noanswer, "requests without an answer")
    assert.same({}, missing, "accepted (202) without all postbacks delivered")
    assert.same({}, extra, "postbacks sent for a conversion answered " .. "503")
    local log = g:error_log()
    assert.falsy(log:find("worker_connections are not enough", 1, true), log)
    return accepted, rejected
  end

  local rates = {}
  -- paced: the rate was the generator's, no ratio
  local function report(label, clients, summary, health, accepted, paced)
    local line = ("%-34s %3d clients  %7.0f answers/s  %7.0f accepted/s  /health %7s/s  %s"):format(
      label, clients, summary.rate, accepted / summary.seconds,
      health.rate == health.rate and ("%.0f"):format(health.rate) or "-",
      paced and "(paced)" or ("ratio %.2f"):format(summary.rate / health.rate))
    rates[#rates + 1] = { line = line, answers = summary.rate, accepted = accepted / summary.seconds,
                          health = not paced and health.rate or nil }
    print("\n" .. line)
  end

  for _, clients in ipairs { 16, 64 } do
    it(("takes a burst of %d conversions from %d clients and delivers all it accepted"):format(TOTAL, clients), function()
      local health = burst(gw, "/health?i={i}", clients)
      local tag = "b" .. clients .. "-"
      local summary, statuses = burst(gw, "/conversion?offer_id=1&payout=1.5&click_id=" .. tag .. "{i}", clients)
      local accepted = check(tag, statuses, summary, gw)
      assert.is_true(accepted > 0)
      report("burst", clients, summary, health, accepted)
    end)
  end

  -- The counters of the workers now running (asked until each answered).
  local function worker_stats(g)
    local by = {}
    for _ = 1, 50 do
      local _, body = ngxlua.http(g.port, "GET", "/postback/stats")
      local s = require("cjson.safe").decode(body)
      if s then by[s.worker] = s end
    end
    return by
  end

  -- A burst paced at RATE conversions a second (so that it lasts well past
  -- the reload, which takes up to a few hundred milliseconds), HUP halfway.
  local RATE = testenv.slow and 300 or 1500
  for _, case in ipairs {
    { offer = 1, tag = "hupf-", what = "as fast as the clients go" },
    { offer = 1, tag = "hup-", rate = RATE, what = "paced, a receiver answering at once" },
    { offer = 2, tag = "hupq-", rate = RATE, what = "paced, postbacks queued behind a slow receiver" },
  } do
    it(("loses nothing it accepted to a reload (HUP) halfway through %d conversions, %s"):format(TOTAL, case.what), function()
      local health = case.rate and { rate = 0 / 0 } or burst(gw, "/health?i={i}", 32)
      local before = gw:workers()
      local summary, statuses = burst(gw, ("/conversion?offer_id=%d&click_id=%s{i}"):format(case.offer, case.tag), 32,
        ("%s --hup-at %d --hup-pid %d"):format(case.rate and ("--rate " .. case.rate) or "", HALF, gw:pid()))
      local accepted = check(case.tag, statuses, summary, gw)
      assert.is_true(accepted >= HALF, accepted .. " accepted")
      report("reload halfway, " .. (case.offer == 1 and "fast receiver" or "slow receiver"), 32, summary, health,
        accepted, case.rate)
      -- new workers took part: they answered, sent, or took over spools
      -- the reload over: new workers only
      local old, renewed = {}, false
      for _, pid in ipairs(before) do old[pid] = true end
      local deadline = socket.gettime() + 15
      repeat
        local now, stale = gw:workers(), false
        for _, pid in ipairs(now) do
          if old[pid] then stale = true else renewed = true end
        end
        if renewed and not stale then break end
        socket.sleep(0.05)
      until socket.gettime() > deadline
      assert.is_true(renewed, "no reload happened: " .. gw:error_log():sub(-3000))
      -- taken over: from a spool still locked by an old worker (adopted),
      -- or from the one of its own worker id once the old worker let go
      -- (recovered, when the dispatcher is made after that)
      local delivered, adopted = 0, 0
      for _, s in pairs(worker_stats(gw)) do
        delivered, adopted = delivered + s.delivered, adopted + s.adopted + s.recovered
      end
      print(("after the reload the new workers delivered %d postbacks, %d of them taken over from spools; "
        .. "%d requests sent again on a new connection (nginx had closed the idle one)")
        :format(delivered, adopted, summary.resent))
      if case.rate then assert.is_true(delivered > 0) end
      if case.offer == 2 then assert.is_true(adopted > 0, "nothing was left to take over") end
    end)
  end

  it("answers 503 with Retry-After past max_queue, and still delivers every 202", function()
    local health = burst(tight, "/health?i={i}", 64)
    local tag = "tight-"
    local summary, statuses = burst(tight, "/conversion?offer_id=2&click_id=" .. tag .. "{i}", 64)
    local accepted, rejected = check(tag, statuses, summary, tight)
    assert.is_true(rejected > 0, "no 503 with a queue of 300 and a receiver taking 20 ms")
    assert.is_true(accepted > 0)
    report("small queue, slow receiver", 64, summary, health, accepted)
    -- each refusal tells when to come back
    assert.equal(rejected, summary.retry_after)
  end)

  it("prints the rates", function()
    assert.is_true(#rates > 0, "no burst reported its rates")
    local lines = {}
    for _, r in ipairs(rates) do
      lines[#lines + 1] = r.line
      for _, k in ipairs { "answers", "accepted", "health" } do
        local v = r[k]
        if k ~= "health" or v ~= nil then
          assert(type(v) == "number" and v > 0 and v < math.huge, ("%s: %s/s is not a positive rate"):format(
            r.line, k))
        end
      end
    end
    print("\n" .. table.concat(lines, "\n"))
  end)
end)
