-- Receivers are isolated, and inputs are bounded.
--
-- Head of line: a receiver that never answers (the hostile server's
-- /silent, reached as localhost) holds 48 of 64 slots; 16 postbacks to a
-- healthy receiver (nginx answering 204 on 127.0.0.1) must all be
-- delivered within 1 s, each within 100 ms of its time alone (measured in
-- the same run), with fire_many and with the dispatcher.
--
-- Bounded inputs: a 2 MB rendered URL, a 1 MB header, headers over 64 KiB
-- in all, and a client call whose query makes a 2 MB URL are refused up
-- front with nil, err (or an error result in fire_many), never a raise and
-- never a wedge: nothing reaches the receiver, and the same engine or
-- dispatcher still delivers small postbacks afterwards.
--
-- Every scenario runs in a child process under a hard limit, so a wedged
-- engine fails its test instead of hanging the suite. Every receiver is on
-- loopback, so every firing call allows private destinations.
local child = require "child"
local hostile = require "hostile"
local mockproc = require "mockproc"
local nginxproc = require "nginxproc"
local testenv = require "testenv"

-- An error's text, cut short for a failure message (the URL may be 2 MB).
local function short(e)
  local s = type(e) == "table" and tostring(e.text or e.message) or tostring(e)
  return #s > 300 and (s:sub(1, 300) .. "...") or s
end

local PRELUDE = [[
local postback = require "postback"
local core = require "postback.core"
local MB = 1024 * 1024
]]

local function run(code, args, limit)
  limit = limit or 10
  local r = child.run(PRELUDE .. code, { args = args, limit = limit })
  assert(not r.timed_out, "the scenario never finished (killed after " .. limit .. " s): a call hung")
  assert(r.raised == nil, "the scenario raised: " .. short(r.raised))
  return r.value
end

-- The 16 healthy postbacks, alone and then behind 48 silent ones, through
-- fire_many or a dispatcher: {alone = {seconds...}, mixed = {seconds...},
-- mixed_ok = {bool...}} where seconds are completion times since the start
-- (-1: never).
local HOL = [[
local via, silent_port, healthy_url = ...
local function items(with_silent)
  local list = {}
  if with_silent then
    for i = 1, 48 do list[#list + 1] = ("http://localhost:%s/silent/%d"):format(silent_port, i) end
  end
  for i = 1, 16 do list[#list + 1] = ("%s/healthy/%d"):format(healthy_url, i) end
  return list
end
local opts = { allow_private = true, concurrency = 64, timeout = 3, retries = 0 }
local function measure(with_silent)
  local first = with_silent and 48 or 0
  local times, oks, t0 = {}, {}, nil
  local function on_result(r, i)
    local k = (i or r.id) - first
    if k >= 1 then times[k], oks[k] = core.now() - t0, r.ok end
  end
  local list = items(with_silent)
  if via == "fire_many" then
    opts.on_result = on_result
    t0 = core.now()
    postback.fire_many(list, opts)
  else
    opts.on_result = on_result
    local d = postback.dispatcher(opts)
    t0 = core.now()
    for _, url in ipairs(list) do assert(d:fire(url)) end
    local n = 0
    while core.now() - t0 < 5 do
      d:poll(0.005)
      n = 0
      for k = 1, 16 do if times[k] then n = n + 1 end end
      if n == 16 then break end
    end
    d:close()
  end
  for k = 1, 16 do times[k], oks[k] = times[k] or -1, oks[k] or false end -- dense, for JSON
  return times, oks
end
local alone = measure(false)
local mixed, mixed_ok = measure(true)
return { alone = alone, mixed = mixed, mixed_ok = mixed_ok }
]]

describe("reliability: isolation and bounded inputs", function()
  local silent, ngx, mock

  setup(function()
    silent = hostile.start()
    ngx = nginxproc.start { locations = "location / { return 204; }" }
    mock = mockproc.start { network = "iso", api_key = "iso-key" }
  end)

  teardown(function()
    if silent then silent:stop() end
    if ngx then ngx:stop() end
    if mock then mock:stop() end
  end)

  before_each(function() silent:reset() end)

  for _, via in ipairs { "fire_many", "dispatcher" } do
    it(via .. ": 48 slots held by a silent receiver do not delay 16 healthy postbacks", function()
      local v = run(HOL, { via, silent.port, ngx.url }, 20)
      local late = {}
      for k = 1, 16 do
        local t, alone = v.mixed[k], v.alone[k]
        assert(alone >= 0, "healthy postback " .. k .. " was not delivered even alone")
        if t < 0 or not v.mixed_ok[k] then
          late[#late + 1] = ("#%d not delivered"):format(k)
        elseif t > 1 or (not testenv.slow and t > alone + 0.1) then
          late[#late + 1] = ("#%d after %.3f s (alone %.3f s)"):format(k, t, alone)
        end
      end
      assert(#late == 0, ("%d of 16 healthy postbacks late or lost: %s"):format(#late, table.concat(late, ", ")))
    end)
  end

  it("fire_many refuses a 2 MB URL, literal or rendered, and delivers the three small ones", function()
    local v = run([[
      local port = ...
      local base = "http://127.0.0.1:" .. port
      local t0 = core.now()
      local rs = postback.fire_many({
        base .. "/ok/big-literal?x=" .. ("a"):rep(2 * MB),
        { url = base .. "/ok/big-rendered?x={aff_sub}", values = { aff_sub = ("b"):rep(2 * MB) } },
        base .. "/ok/small/1",
        { url = base .. "/ok/small/2?c={click_id}", values = { click_id = "c2" } },
        base .. "/ok/small/3",
      }, { allow_private = true, concurrency = 4, timeout = 2, retries = 0 })
      local out = { elapsed = core.now() - t0, results = {} }
      for i, r in ipairs(rs) do out.results[i] = { ok = r.ok, error = r.error } end
      return out
    ]], { silent.port })
    assert.is_true(v.elapsed < 5, ("fire_many took %.1f s"):format(v.elapsed))
    local rs = v.results
    for i = 1, 2 do
      assert.is_false(rs[i].ok, "the 2 MB URL was fired")
      assert.equal("validation", rs[i].error and rs[i].error.kind, "item " .. i .. ": " .. short(rs[i].error))
    end
    for i = 3, 5 do assert.is_true(rs[i].ok, "small postback " .. (i - 2) .. ": " .. short(rs[i].error)) end
    local counts = silent:counts()
    assert.is_nil(counts["/ok/big-literal"], "the 2 MB URL reached the receiver")
    assert.is_nil(counts["/ok/big-rendered"], "the 2 MB URL reached the receiver")
    for i = 1, 3 do assert.equal(1, counts["/ok/small/" .. i]) end
  end)

  it("fire of a 2 MB URL with timeout = 2 returns nil, err within 5 s, and fire still works after", function()
    local v = run([[
      local port = ...
      local base = "http://127.0.0.1:" .. port
      local t0 = core.now()
      local r, err = postback.fire(base .. "/ok/big?x=" .. ("a"):rep(2 * MB), nil, { allow_private = true, timeout = 2 })
      local elapsed = core.now() - t0
      local r2, err2 = postback.fire(base .. "/ok/after", nil, { allow_private = true, timeout = 2, retries = 0 })
      return { elapsed = elapsed, fired = r ~= nil, err = err, after = r2 ~= nil, err2 = err2 }
    ]], { silent.port })
    assert.is_true(v.elapsed < 5, ("fire took %.1f s"):format(v.elapsed))
    assert.is_false(v.fired, "the 2 MB URL was fired")
    assert.equal("validation", v.err and v.err.kind, short(v.err))
    assert.is_true(v.after, "a small fire afterwards failed: " .. short(v.err2))
    assert.equal(0, silent:count("/ok/big"))
  end)

  it("c:list with a 2 MB filter and timeout = 3 returns nil, err within 5 s; the client still works", function()
    mock:control("DELETE", "/_mock/requests")
    local v = run([[
      local url = ...
      local c = assert(postback.client { network = "iso", api_key = "iso-key", base_url = url,
        timeout = 3 })
      local t0 = core.now()
      local data, err = c:list { filters = { code = { CONTAINS = ("x"):rep(2 * MB) } } }
      local elapsed = core.now() - t0
      local again, err2 = c:list { limit = 1 }
      return { elapsed = elapsed, listed = data ~= nil, err = err, again = again ~= nil, err2 = err2 }
    ]], { mock.url })
    assert.is_true(v.elapsed < 5, ("c:list took %.1f s"):format(v.elapsed))
    assert.is_false(v.listed, "a 2 MB query was sent and answered")
    assert.equal("validation", v.err and v.err.kind, short(v.err))
    assert.is_true(v.again, "the client failed afterwards: " .. short(v.err2))
    local lists = 0
    for _, r in ipairs(mock:requests()) do
      if r.path == "/v1/affiliate_postbacks" then lists = lists + 1 end
    end
    assert.equal(1, lists, "the 2 MB query reached the server")
  end)

  -- A 1 MB header, and ten 7 KiB headers (over 64 KiB in all).
  local HEADERS = [[
    local big = { ["X-Big"] = ("h"):rep(MB) }
    local many = {}
    for i = 1, 10 do many["X-Part-" .. i] = ("p"):rep(7 * 1024) end
  ]]

  it("fire refuses a 1 MB header and headers over 64 KiB in all, and still works after", function()
    local v = run(HEADERS .. [[
      local base = "http://127.0.0.1:" .. select(1, ...)
      local r, err = postback.fire(base .. "/ok/fire-big-header", nil, { allow_private = true, headers = big, timeout = 2, retries = 0 })
      local r2, err2 = postback.fire(base .. "/ok/fire-many-headers", nil, { allow_private = true, headers = many, timeout = 2, retries = 0 })
      local r3, err3 = postback.fire(base .. "/ok/fire-after", nil, { allow_private = true, timeout = 2, retries = 0 })
      return { big = r ~= nil, err = err, many = r2 ~= nil, err2 = err2, after = r3 ~= nil, err3 = err3 }
    ]], { silent.port })
    assert.is_false(v.big, "fire sent a 1 MB header")
    assert.equal("validation", v.err and v.err.kind, short(v.err))
    assert.is_false(v.many, "fire sent 70 KiB of headers")
    assert.equal("validation", v.err2 and v.err2.kind, short(v.err2))
    assert.is_true(v.after, "fire failed afterwards: " .. short(v.err3))
    assert.equal(0, silent:count("/ok/fire-big-header"))
    assert.equal(0, silent:count("/ok/fire-many-headers"))
    assert.equal(1, silent:count("/ok/fire-after"))
  end)

  it("fire_many refuses an item with a 1 MB header and delivers the three small ones", function()
    local v = run(HEADERS .. [[
      local base = "http://127.0.0.1:" .. select(1, ...)
      local rs = postback.fire_many({
        { url = base .. "/ok/many-big-header", headers = big },
        base .. "/ok/many-small/1", base .. "/ok/many-small/2", base .. "/ok/many-small/3",
      }, { allow_private = true, concurrency = 4, timeout = 2, retries = 0 })
      local out = {}
      for i, x in ipairs(rs) do out[i] = { ok = x.ok, error = x.error } end
      return out
    ]], { silent.port })
    assert.is_false(v[1].ok, "fire_many sent a 1 MB header")
    assert.equal("validation", v[1].error and v[1].error.kind, short(v[1].error))
    for i = 2, 4 do assert.is_true(v[i].ok, "small postback " .. (i - 1) .. ": " .. short(v[i].error)) end
    assert.equal(0, silent:count("/ok/many-big-header"))
    for i = 1, 3 do assert.equal(1, silent:count("/ok/many-small/" .. i)) end
  end)

  it("d:fire refuses a 1 MB header and the dispatcher delivers the small ones", function()
    local v = run(HEADERS .. [[
      local base = "http://127.0.0.1:" .. select(1, ...)
      local d = postback.dispatcher { allow_private = true, timeout = 2, retries = 0 }
      local id, err = d:fire(base .. "/ok/d-big-header", nil, { headers = big })
      local id2, err2 = d:fire(base .. "/ok/d-many-headers", nil, { headers = many })
      for i = 1, 3 do assert(d:fire(base .. "/ok/d-small/" .. i)) end
      local waited = d:wait(5) == true
      d:close()
      return { id = id, err = err, id2 = id2, err2 = err2, waited = waited }
    ]], { silent.port })
    assert.is_nil(v.id, "d:fire accepted a 1 MB header")
    assert.equal("validation", v.err and v.err.kind, short(v.err))
    assert.is_nil(v.id2, "d:fire accepted 70 KiB of headers")
    assert.equal("validation", v.err2 and v.err2.kind, short(v.err2))
    assert.is_true(v.waited, "the dispatcher did not deliver the small postbacks after the refused ones")
    assert.equal(0, silent:count("/ok/d-big-header"))
    for i = 1, 3 do assert.equal(1, silent:count("/ok/d-small/" .. i)) end
  end)

  it("postback.client refuses a 1 MB header option with nil, err", function()
    local v = run(HEADERS .. [[
      local c, err = postback.client { network = "iso", api_key = "iso-key", base_url = select(1, ...), headers = big }
      local c2, err2 = postback.client { network = "iso", api_key = "iso-key", base_url = select(1, ...), headers = many }
      return { made = c ~= nil, err = err, made2 = c2 ~= nil, err2 = err2 }
    ]], { mock.url })
    assert.is_false(v.made, "a client with a 1 MB header was made")
    assert.equal("validation", v.err and v.err.kind, short(v.err))
    assert.is_false(v.made2, "a client with 70 KiB of headers was made")
    assert.equal("validation", v.err2 and v.err2.kind, short(v.err2))
  end)

  it("the dispatcher refuses a 2 MB URL at d:fire and keeps delivering", function()
    local v = run([[
      local port = ...
      local base = "http://127.0.0.1:" .. port
      local d = postback.dispatcher { allow_private = true, timeout = 2, retries = 0 }
      local id, err = d:fire(base .. "/ok/d-big?x=" .. ("a"):rep(2 * MB))
      local id2, err2 = d:fire(base .. "/ok/d-big-rendered?x={aff_sub}", { aff_sub = ("b"):rep(2 * MB) })
      for i = 1, 3 do assert(d:fire(base .. "/ok/d-after/" .. i)) end
      local t0 = core.now()
      local ok = d:wait(5)
      local elapsed = core.now() - t0
      d:close()
      return { id = id, err = err, id2 = id2, err2 = err2, waited = ok == true, elapsed = elapsed }
    ]], { silent.port })
    assert.is_nil(v.id, "d:fire accepted a 2 MB URL")
    assert.equal("validation", v.err and v.err.kind, short(v.err))
    assert.is_nil(v.id2, "d:fire accepted a 2 MB rendered URL")
    assert.equal("validation", v.err2 and v.err2.kind, short(v.err2))
    assert.is_true(v.waited, ("the small postbacks were not delivered (waited %.1f s)"):format(v.elapsed))
    local counts = silent:counts()
    assert.is_nil(counts["/ok/d-big"])
    for i = 1, 3 do assert.equal(1, counts["/ok/d-after/" .. i]) end
  end)

  it("a URL over 8 MB never reaches the spool: the next dispatcher on it polls and delivers", function()
    local spool = os.tmpname()
    os.remove(spool)
    local v = run([[
      local port, spool = ...
      local base = "http://127.0.0.1:" .. port
      local d = assert(postback.dispatcher { allow_private = true, timeout = 2, retries = 0, spool = spool })
      local id, err = d:fire(base .. "/ok/huge?x=" .. ("a"):rep(9 * MB))
      d:close()
      local f = io.open(spool, "rb")
      local size = f and f:seek("end") or 0
      if f then f:close() end
      local d2 = assert(postback.dispatcher { allow_private = true, timeout = 2, retries = 0, spool = spool })
      local polled, perr = pcall(d2.poll, d2, 0.1)
      assert(d2:fire(base .. "/ok/spool-after"))
      local waited = d2:wait(5) == true
      d2:close()
      return { id = id, err = err, size = size, polled = polled, perr = not polled and tostring(perr) or nil,
               waited = waited }
    ]], { silent.port, spool })
    os.remove(spool)
    assert.is_nil(v.id, "d:fire accepted a 9 MB URL")
    assert.is_table(v.err)
    assert.is_true(v.size < 1024 * 1024, ("the spool holds %d bytes after a refused fire"):format(v.size))
    assert.is_true(v.polled, "poll raised on the reopened spool: " .. tostring(v.perr))
    assert.is_true(v.waited, "the reopened dispatcher did not deliver")
    assert.equal(0, silent:count("/ok/huge"))
    assert.equal(1, silent:count("/ok/spool-after"))
  end)
end)
