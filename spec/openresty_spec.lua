-- The OpenResty example in a real nginx (Debian's nginx + ngx_http_lua on
-- LuaJIT), against the mock Offerslook: admin CRUD through the client on
-- cosockets, conversions handed to the worker's dispatcher, a worker that
-- keeps answering while a slow receiver holds postbacks in flight, 503 with
-- Retry-After when it cannot take a conversion (its spool's disk full
-- included), the destination policy from the environment, and a log line
-- for every postback that fails.
local fixtures = require "fixtures"
local gatewayproc = require "gatewayproc"
local mockproc = require "mockproc"
local ngxlua = require "ngxlua"
local socket = require "socket"

-- A request to the gateway: status, body, head (a body is sent as JSON).
local function request(port, method, path, body)
  return ngxlua.http(port, method, path, body, 10, "application/json")
end

describe("OpenResty gateway example", function()
  local title, why = ngxlua.skip_reason { suites = { "lua5.4", "luajit" } }
  if title then it(title, function() pending(why) end) return end

  local mock, gw, port
  local cjson = require("cjson.safe")

  local function env(extra)
    local e = { OFFERSLOOK_NETWORK = "gw", OFFERSLOOK_API_KEY = "gw-key", OFFERSLOOK_BASE_URL = mock.url }
    for k, v in pairs(extra or {}) do e[k] = v end
    return e
  end

  setup(function()
    ngxlua.build_luajit()
    mock = mockproc.start { network = "gw", api_key = "gw-key" }
    -- the sandbox fires at the mock on loopback: allowed by the environment
    gw = gatewayproc.start { env = env { POSTBACK_ALLOW_PRIVATE = "1" } }
    port = gw.port
  end)

  teardown(function()
    if gw then gw:stop() end
    if mock then mock:stop() end
  end)

  local function error_log() return gw:error_log() end

  before_each(function() mock:reset() end)

  -- What the receiver got, once it holds n postbacks (or after 5 s).
  local function received_at_least(n)
    local got
    fixtures.wait_for(function()
      got = mock:received()
      return #got >= n
    end, 5)
    return got
  end

  it("proxies postback CRUD to Offerslook", function()
    local code = mock.url .. "/postback?click_id={click_id}&payout={payout}"
    local status, body = request(port, "POST", "/admin/postbacks",
      cjson.encode { offer_id = 1, affiliate_id = 9, type = 2, code = code })
    assert.equal(201, status, body .. error_log())
    local pb = cjson.decode(body).data
    assert.equal(9, pb.affiliate_id)
    pb.id = ("%d"):format(pb.id) -- cjson gives 1.0 under Lua 5.4
    status, body = request(port, "GET", "/admin/postbacks/" .. pb.id)
    assert.equal(200, status)
    assert.equal(tonumber(pb.id), cjson.decode(body).data.id)
    status = request(port, "PATCH", "/admin/postbacks/" .. pb.id .. "?status=rejected")
    assert.equal(200, status)
    status, body = request(port, "PUT", "/admin/postbacks/" .. pb.id, cjson.encode { code = code .. "&v=2" })
    assert.equal(200, status, body)
    status, body = request(port, "GET", "/admin/postbacks")
    assert.equal(200, status)
    assert.equal(1, cjson.decode(body).data.totalRows)
    -- the protocol rule holds in the gateway too, before any request
    status, body = request(port, "POST", "/admin/postbacks",
      cjson.encode { offer_id = 2, affiliate_id = 9, type = 3, code = "<img src=\"x\">" })
    assert.equal(400, status)
    assert.equal("validation", cjson.decode(body).error.kind)
    status = request(port, "DELETE", "/admin/postbacks/" .. pb.id)
    assert.equal(200, status)
    status = request(port, "GET", "/admin/postbacks/" .. pb.id)
    assert.equal(404, status)
    -- what reached the mock API: authenticated calls
    for _, r in ipairs(mock:requests()) do assert.is_true(r.auth_ok) end
  end)

  it("fires the offer's postbacks for a conversion, in the background", function()
    local code = mock.url .. "/postback?click_id={click_id}&payout={payout}&aff={aff_id}"
    for aff = 1, 3 do
      local status = request(port, "POST", "/admin/postbacks",
        cjson.encode { offer_id = 3, affiliate_id = aff, type = 2, code = code })
      assert.equal(201, status)
    end
    local status, body = request(port, "GET", "/conversion?click_id=c-77&payout=1.5&offer_id=3")
    assert.equal(202, status, body .. error_log())
    assert.equal(3, cjson.decode(body).queued)
    local got = received_at_least(3)
    assert.equal(3, #got, error_log())
    local affs = {}
    for _, g in ipairs(got) do
      assert.matches("click_id=c%-77&payout=1.5", g.query)
      affs[g.query:match("aff=(%d+)")] = true
    end
    assert.same({ ["1"] = true, ["2"] = true, ["3"] = true }, affs)
  end)

  it("keeps answering while a slow receiver holds postbacks in flight", function()
    local slow = mock.url .. "/postback?click_id={click_id}&mock_fault=slow&mock_delay=2"
    for aff = 1, 4 do
      assert.equal(201, (request(port, "POST", "/admin/postbacks",
        cjson.encode { offer_id = 1, affiliate_id = aff, type = 1, code = slow }))) -- allow unknown params
    end
    local t0 = socket.gettime()
    assert.equal(202, (request(port, "GET", "/conversion?click_id=slow-1&offer_id=1")))
    -- the worker answers other requests at once
    local worst = 0
    for _ = 1, 20 do
      local t = socket.gettime()
      local status = request(port, "GET", "/health")
      assert.equal(200, status)
      worst = math.max(worst, socket.gettime() - t)
    end
    assert.is_true(socket.gettime() - t0 < 1.5, "the health checks waited for the receiver")
    assert.is_true(worst < 0.5, ("a health check took %.0f ms"):format(worst * 1000))
    assert.equal(4, #received_at_least(4), error_log())
  end)

  -- The spool on a disk that fills (a 64 KiB tmpfs): a conversion is
  -- answered 202 only when it is in the spool, 503 once it cannot be, and
  -- every conversion answered 202 is delivered; the 503 ones are not taken.
  it("answers 503 once its spool's disk is full, and delivers every conversion it answered 202", function()
    local is_root = fixtures.run("test \"$(id -u)\" = 0")
    if not is_root then return pending("needs root to mount a tmpfs") end
    local mnt = fixtures.tmpdir()
    if not fixtures.run("mount -t tmpfs -o size=64k tmpfs " .. fixtures.sh(mnt) .. " 2>/dev/null") then
      fixtures.run("rm -rf " .. fixtures.sh(mnt))
      return pending("mounting a tmpfs is not permitted here")
    end
    fixtures.run("chown nobody " .. fixtures.sh(mnt) .. " 2>/dev/null")
    local full
    finally(function()
      if full then full:stop() end
      fixtures.run("umount " .. fixtures.sh(mnt) .. "; rm -rf " .. fixtures.sh(mnt))
    end)
    full = gatewayproc.start { env = env { POSTBACK_ALLOW_PRIVATE = "1", POSTBACK_SPOOL = mnt } }
    -- each postback about 1 KiB in the spool, held 2 s by its receiver
    local code = mock.url .. "/postback?click_id={click_id}&mock_fault=slow&mock_delay=2&pad=" .. ("x"):rep(900)
    assert.equal(201, (request(full.port, "POST", "/admin/postbacks",
      cjson.encode { offer_id = 5, affiliate_id = 1, type = 2, code = code })))
    local taken, refused = {}, {}
    for i = 1, 150 do
      local status, body = request(full.port, "GET", "/conversion?offer_id=5&click_id=full-" .. i)
      if status == 202 then
        taken[#taken + 1] = "full-" .. i
      else
        assert.equal(503, status, body .. full:error_log())
        refused["full-" .. i] = true
      end
    end
    assert.is_true(#taken > 0 and next(refused) ~= nil,
      ("%d taken, none refused: the disk never filled"):format(#taken))
    -- still serving
    assert.equal(200, (request(full.port, "GET", "/health")))
    local got = {}
    fixtures.wait_for(function()
      for _, r in ipairs(mock:received()) do got[r.query:match("click_id=([%w-]+)")] = true end
      for _, id in ipairs(taken) do if not got[id] then return false end end
      return true
    end, 60)
    for _, id in ipairs(taken) do assert.is_true(got[id], id .. " was answered 202 and never delivered") end
    for id in pairs(got) do assert.is_nil(refused[id], id .. " was answered 503 yet delivered") end
  end)

  it("answers 503 with Retry-After when it cannot read the offer's postbacks", function()
    mock:fault { fault = "status", status = 503, times = 100 }
    local status, body, head = request(port, "GET", "/conversion?click_id=c-503&offer_id=77")
    mock:control("DELETE", "/_mock/faults")
    assert.equal(503, status, body)
    assert.truthy(head:lower():find("\r\nretry%-after: 1"), head)
    assert.truthy(error_log():find("cannot read the postbacks of offer 77", 1, true))
  end)

  it("shows the dispatcher's counters", function()
    local status, body = request(port, "GET", "/postback/stats")
    assert.equal(200, status)
    local s = cjson.decode(body)
    assert.is_true(s.running)
    assert.is_number(s.delivered)
    assert.truthy(s.spool and s.spool.path:find("/spool/postback%-w%d+%-0%.spool$"), body)
  end)

  it("refuses private receivers unless the environment allows them, and logs every postback that fails", function()
    local code = mock.url .. "/postback?click_id={click_id}&aff={aff_id}"
    for aff = 1, 2 do
      assert.equal(201, (request(port, "POST", "/admin/postbacks",
        cjson.encode { offer_id = 5, affiliate_id = aff, type = 2, code = code })))
    end
    -- the same layout, without POSTBACK_ALLOW_PRIVATE: loopback is refused
    local strict = gatewayproc.start { env = env() }
    local ok, err = pcall(function()
      local status = request(strict.port, "GET", "/conversion?click_id=c-blocked&offer_id=5")
      assert.equal(202, status)
      local log
      fixtures.wait_for(function()
        log = strict:error_log()
        return select(2, log:gsub("postback failed", "")) >= 2
      end, 5)
      assert.equal(2, select(2, log:gsub("postback failed: [^\n]*refused: 127%.0%.0%.1 is a loopback", "")), log)
      assert.equal(0, #mock:received())
    end)
    strict:stop()
    assert(ok, err)
    -- allowed by network
    local by_net = gatewayproc.start { env = env { POSTBACK_ALLOW_NETWORKS = "10.0.0.0/8, 127.0.0.0/8" } }
    ok, err = pcall(function()
      assert.equal(202, (request(by_net.port, "GET", "/conversion?click_id=c-net&offer_id=5")))
      assert.equal(2, #received_at_least(2))
    end)
    by_net:stop()
    assert(ok, err)
    -- a receiver that refuses: logged once per postback, after its retries
    mock:reset()
    assert.equal(201, (request(port, "POST", "/admin/postbacks", cjson.encode {
      offer_id = 6, affiliate_id = 1, type = 2, code = mock.url .. "/postback?click_id={click_id}&mock_fault=status&mock_status=404" })))
    assert.equal(202, (request(port, "GET", "/conversion?click_id=c-404&offer_id=6")))
    local log
    fixtures.wait_for(function()
      log = error_log()
      return log:find("c-404", 1, true) ~= nil
    end, 5)
    assert.equal(1, select(2, log:gsub("postback failed: [^\n]*c%-404", "")), log)
  end)
end)
