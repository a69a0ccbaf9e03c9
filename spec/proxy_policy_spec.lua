-- The destination policy with proxies, end to end. A proxy resolves names
-- itself, so a proxied transfer can only have an IP-literal host checked,
-- before the proxy is asked: in every spelling libcurl reads as an address.
-- A transfer is proxied or not as postback decides, never as libcurl would
-- by itself from the environment, so none goes out directly without its
-- addresses checked: proxy = URL takes every host (no_proxy aside), and
-- with proxy = "env" the engine picks each route from the environment as
-- libcurl reads it -- a postback it names no proxy for (no variable for
-- its scheme, its host in no_proxy) connects directly, checked.
--
-- Two counting receivers (spec/support/countrecv.lua) listen on 127.0.0.1:
-- the destination, and a stand-in for the proxy, which logs each request
-- line (a proxied request names the whole URL: "GET http://host/path") and
-- answers 200. Each scenario runs in a child process, with the proxy
-- environment it needs and nothing else of the kind.
local child = require "child"
local countrecv = require "countrecv"

local quote = child.quote
local PROXY_ENV = { "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
                    "no_proxy", "NO_PROXY" }

-- What every scenario starts with: the ports as arguments, helpers.
local PRELUDE = [==[
local proxy_port, recv_port = ...
local postback = require "postback"
local core = require "postback.core"
local PROXY = "http://127.0.0.1:" .. proxy_port
local BASE = { retries = 0, timeout = 5, connect_timeout = 3 }
local function opts(extra)
  local o = {}
  for k, v in pairs(BASE) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end
local function item(r) return { ok = r.ok, status = r.status, err = r.error } end
local function one(r, err) return { ok = r ~= nil, status = r and r.status, err = err } end
-- d:fire of each URL; the outcome of each (refused at once, or its result)
local function dispatch(o, urls)
  local out, ids = {}, {}
  o.on_result = function(r) if ids[r.id] then out[ids[r.id]] = item(r) end end
  local d = postback.dispatcher(o)
  for i, u in ipairs(urls) do
    local id, err = d:fire(u)
    if id then ids[id] = i else out[i] = { ok = false, err = err, at_once = true } end
  end
  local t0 = core.now()
  while d:pending() > 0 and core.now() - t0 < 10 do d:poll(0.05) end
  d:close()
  return out
end
-- fire, fire_many and the dispatcher with options o, on every case {name,
-- base URL} (paths /fire/<name>, /many/<name>, /disp/<name>): out[name] =
-- {fire =, many =, disp =}
local function three(cases, o)
  local out, urls, durls = {}, {}, {}
  for i, c in ipairs(cases) do
    out[c[1]] = { fire = one(postback.fire(c[2] .. "/fire/" .. c[1], nil, opts(o))) }
    urls[i] = c[2] .. "/many/" .. c[1]
    durls[i] = c[2] .. "/disp/" .. c[1]
  end
  for i, r in ipairs(postback.fire_many(urls, opts(o))) do out[cases[i][1]].many = item(r) end
  local d = dispatch(opts(o), durls)
  for i, c in ipairs(cases) do out[c[1]].disp = d[i] end
  return out
end
-- e:add of each request on an engine with the destination policy; true, or
-- {why, code} when refused
local function add(e, reqs)
  local out = {}
  for i, req in ipairs(reqs) do
    local ok, why, code = e:add(req, i)
    out[i] = ok and true or { why = why, code = code }
  end
  local t0 = core.now()
  while e:pending() > 0 and core.now() - t0 < 10 do
    e:perform(0.05)
    e:drain { slow = {} }
  end
  return out
end
]==]

-- Runs a scenario with env (name -> value; PROXY_PORT in a value is the
-- stand-in's port) as the only proxy environment, and args after the two
-- ports; returns its value and the lines each receiver logged.
local function scenario(code, env, args)
  local proxy = countrecv.start({ "127.0.0.1" }, { lifetime = 60 })
  local recv = countrecv.start({ "127.0.0.1" }, { lifetime = 60 })
  local prefix = "env"
  for _, k in ipairs(PROXY_ENV) do prefix = prefix .. " -u " .. k end
  for k, v in pairs(env or {}) do
    prefix = prefix .. " " .. quote(k .. "=" .. v:gsub("PROXY_PORT", tostring(proxy.port)))
  end
  local argv = { proxy.port, recv.port }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local r = child.run(PRELUDE .. code, { args = argv, limit = 60,
                                         wrap = function(cmd) return prefix .. " " .. cmd end })
  require("socket").sleep(0.2) -- a connection made after all would be logged by now
  local plog, rlog = proxy:lines(), recv:lines()
  proxy:stop()
  recv:stop()
  assert(not r.timed_out, "the scenario never finished (killed at its time limit)")
  assert(r.raised == nil, "the scenario failed: " .. tostring(r.raised))
  return r.value, plog, rlog
end

local function is_blocked(e, address, label)
  assert(type(e) == "table", label .. ": no error")
  assert.equal("blocked_address", e.code, label .. ": " .. tostring(e.text or e.message))
  assert.is_false(e.retryable, label)
  assert.truthy(tostring(e.message):find(address .. " is a loopback address", 1, true),
    label .. ": " .. tostring(e.message))
end

-- Log lines that name path (as the whole target or its end).
local function lines_with(log, path)
  local out = {}
  for _, l in ipairs(log) do
    if l:find(path, 1, true) then out[#out + 1] = l end
  end
  return out
end

describe("destination policy through a proxy option", function()
  -- every spelling of 127.0.0.1 libcurl reads as an address
  local SPELLINGS = { "127.0.0.1", "0x7f.1", "\239\188\145\239\188\146\239\188\151.\239\188\144.\239\188\144.\239\188\145",
                      "127.1", "0177.0.0.1", "2130706433", "0x7f000001" }
  local v, plog, rlog

  setup(function()
    v, plog, rlog = scenario([==[
local hosts = {}
for i = 3, select("#", ...) do hosts[#hosts + 1] = select(i, ...) end
local out = {}
local urls, durls, reqs = {}, {}, {}
for i, h in ipairs(hosts) do
  urls[i] = ("http://%s:%s/many/%d"):format(h, recv_port, i)
  durls[i] = ("http://%s:%s/disp/%d"):format(h, recv_port, i)
  reqs[i] = { url = ("http://%s:%s/add/%d"):format(h, recv_port, i), proxy = PROXY }
end
out.many = {}
for i, r in ipairs(postback.fire_many(urls, opts { proxy = PROXY })) do out.many[i] = item(r) end
out.disp = dispatch(opts { proxy = PROXY }, durls)
out.add = add(core.engine { destinations = true }, reqs)
-- 8.8.8.8 spelled as one number: an address the policy allows, so the proxy is asked
out.global_many = item(postback.fire_many({ "http://134744072:9/global-many" }, opts { proxy = PROXY })[1])
out.global_add = add(core.engine { destinations = true }, { { url = "http://134744072:9/global-add", proxy = PROXY } })[1]
return out
]==], nil, SPELLINGS)
  end)

  it("refuses 127.0.0.1 in every spelling as loopback before asking the proxy", function()
    assert(v, "no result")
    for i, h in ipairs(SPELLINGS) do
      local label = ("%q"):format(h)
      assert.is_false(v.many[i].ok, "fire_many sent " .. label .. " to the proxy")
      is_blocked(v.many[i].err, "127.0.0.1", "fire_many " .. label)
      assert.is_false(v.disp[i].ok, "the dispatcher sent " .. label .. " to the proxy")
      is_blocked(v.disp[i].err, "127.0.0.1", "dispatcher " .. label)
      assert.equal("blocked_address", v.add[i].code, "e:add " .. label .. ": " .. tostring(v.add[i].why))
      assert.truthy(tostring(v.add[i].why):find("127.0.0.1 is a loopback address", 1, true), v.add[i].why)
      for _, path in ipairs { "/many/", "/disp/", "/add/" } do
        assert.same({}, lines_with(plog, path .. i), label .. " reached the proxy")
      end
    end
    assert.same({}, rlog)
  end)

  it("checks an address spelled as one number as that address (8.8.8.8 goes to the proxy)", function()
    assert(v, "no result")
    assert.is_true(v.global_many.ok, tostring(v.global_many.err and v.global_many.err.text))
    assert.is_true(v.global_add, tostring(type(v.global_add) == "table" and v.global_add.why))
    assert.same({ "req 127.0.0.1 GET http://8.8.8.8:9/global-many" }, lines_with(plog, "/global-many"))
    assert.same({ "req 127.0.0.1 GET http://8.8.8.8:9/global-add" }, lines_with(plog, "/global-add"))
  end)
end)

describe("proxy = URL with no_proxy in the environment", function()
  local v, plog, rlog

  setup(function()
    v, plog, rlog = scenario([==[
local function url(path) return ("http://localhost:%s%s"):format(recv_port, path) end
local out = { recv_port = tonumber(recv_port) }
out.fire = one(postback.fire(url("/np-fire"), nil, opts { proxy = PROXY }))
out.many = item(postback.fire_many({ url("/np-many") }, opts { proxy = PROXY })[1])
out.disp = dispatch(opts { proxy = PROXY }, { url("/np-disp") })[1]
out.add = add(core.engine { destinations = true }, { { url = url("/np-add"), proxy = PROXY } })[1]
return out
]==], { no_proxy = "localhost,127.0.0.1" })
  end)

  it("sends every request through the proxy: the environment's no_proxy does not apply", function()
    assert(v, "no result")
    for _, k in ipairs { "fire", "many", "disp" } do
      assert.is_true(v[k].ok, k .. ": " .. tostring(v[k].err and (v[k].err.text or v[k].err.message)))
    end
    assert.is_true(v.add, "e:add: " .. tostring(type(v.add) == "table" and v.add.why))
    for _, name in ipairs { "fire", "many", "disp", "add" } do
      local path = "/np-" .. name
      assert.same({ ("req 127.0.0.1 GET http://localhost:%d%s"):format(v.recv_port, path) },
        lines_with(plog, path), name)
    end
    assert.same({}, rlog, "connected to the destination directly")
  end)
end)

describe('proxy = "" (no proxy)', function()
  local v, plog, rlog

  setup(function()
    v, plog, rlog = scenario([==[
local function url(path) return ("http://localhost:%s%s"):format(recv_port, path) end
local out = {}
out.fire = one(postback.fire(url("/empty-fire"), nil, opts { proxy = "" }))
out.many = item(postback.fire_many({ url("/empty-many") }, opts { proxy = "" })[1])
out.disp = dispatch(opts { proxy = "" }, { url("/empty-disp") })[1]
local e = core.engine { destinations = true }
local ok, why, code = e:add({ url = url("/empty-add"), proxy = "" }, 1)
out.add = { ok = ok, why = why, code = code }
while e:pending() > 0 do
  e:perform(0.05)
  local sink = { slow = {} }
  e:drain(sink)
  if sink.slow[1] then out.add = { fail = sink.slow[1].fail, message = sink.slow[1].message } end
end
-- allowed: the destination is reachable without a proxy
out.allowed = one(postback.fire(url("/empty-allowed"), nil, opts { proxy = "", allow_private = true }))
return out
]==])
  end)

  it("connects directly with every address checked", function()
    assert(v, "no result")
    for _, k in ipairs { "fire", "many", "disp" } do
      assert.is_false(v[k].ok, k .. " reached localhost")
      assert.equal("blocked_address", v[k].err.code, k)
    end
    assert.equal("blocked", v.add.fail, "e:add: " .. tostring(v.add.message or v.add.why))
    assert.is_true(v.allowed.ok, tostring(v.allowed.err and v.allowed.err.text))
    assert.same({}, plog)
    -- the allowed one alone reached the destination
    assert.same({ "conn 127.0.0.1", "req 127.0.0.1 GET /empty-allowed" }, rlog)
  end)
end)

describe('proxy = "env"', function()
  -- the three ways of firing refused a case, and nothing of it reached anyone
  local function refused(v, logs, name)
    for _, way in ipairs { "fire", "many", "disp" } do
      local r = v[name][way]
      assert(r, name .. ": no outcome for " .. way)
      assert.is_false(r.ok, ("%s %s was delivered"):format(way, name))
      assert.equal("blocked_address", r.err and r.err.code, ("%s %s: %s"):format(way, name,
        tostring(r.err and (r.err.text or r.err.message))))
    end
    for _, log in ipairs(logs) do assert.same({}, lines_with(log, "/" .. name), name) end
  end

  -- the three ways delivered a case through the proxy, which got the whole URL
  local function proxied(v, plog, rlog, name, base)
    for _, way in ipairs { "fire", "many", "disp" } do
      local r = v[name][way]
      assert.is_true(r.ok, ("%s %s: %s"):format(way, name, tostring(r.err and (r.err.text or r.err.message))))
      assert.same({ ("req 127.0.0.1 GET %s/%s/%s"):format(base, way, name) },
        lines_with(plog, ("/%s/%s"):format(way, name)))
    end
    assert.same({}, lines_with(rlog, "/" .. name))
  end

  describe("with http_proxy alone", function()
    local v, plog, rlog
    setup(function()
      v, plog, rlog = scenario([==[
local function at(host, scheme) return ("%s://%s:%s"):format(scheme or "http", host, recv_port) end
local out = three({ { "https-literal", at("127.0.0.1", "https") }, { "https-name", at("localhost", "https") },
                    { "http-literal", at("127.0.0.1") }, { "http-name", "http://postback.test" } },
                  { proxy = "env" })
out.add = add(core.engine { destinations = true },
              { { url = at("localhost", "https") .. "/add/https-add", proxy_from_env = true } })[1]
return out
]==], { http_proxy = "http://127.0.0.1:PROXY_PORT" })
    end)

    it("connects an https URL directly, every address checked (the environment names no proxy for it)", function()
      assert(v, "no result")
      refused(v, { plog, rlog }, "https-literal")
      refused(v, { plog, rlog }, "https-name")
      -- e:add: refused at connect time
      assert.is_true(v.add)
      assert.same({}, rlog, "something connected to the destination")
    end)

    it("sends an http URL through the proxy: an IP-literal host checked first, a name the proxy's", function()
      assert(v, "no result")
      refused(v, { plog, rlog }, "http-literal")
      proxied(v, plog, rlog, "http-name", "http://postback.test")
    end)
  end)

  describe("with http_proxy and no_proxy", function()
    local v, plog, rlog
    setup(function()
      v, plog, rlog = scenario([==[
local function at(host) return ("http://%s:%s"):format(host, recv_port) end
local out = three({ { "listed", at("localhost") }, { "listed-upper", at("LOCALHOST") },
                    { "not-listed", "http://other.test" } },
                  { proxy = "env" })
out.allowed = three({ { "direct-allowed", at("localhost") } }, { proxy = "env", allow_private = true })
return out
]==], { http_proxy = "http://127.0.0.1:PROXY_PORT", no_proxy = "example.com, localhost" })
    end)

    it("connects a host in no_proxy directly, every address checked", function()
      assert(v, "no result")
      refused(v, { plog, rlog }, "listed")
      refused(v, { plog, rlog }, "listed-upper")
      -- the destination's connections: the three allowed ones below
      assert.equal(3, #lines_with(rlog, "conn "), "a refused postback connected")
    end)

    it("connects a host in no_proxy directly: allowed, it reaches the destination itself", function()
      assert(v, "no result")
      for _, way in ipairs { "fire", "many", "disp" } do
        local r = v.allowed["direct-allowed"][way]
        assert.is_true(r.ok, way .. ": " .. tostring(r.err and (r.err.text or r.err.message)))
      end
      assert.equal(3, #lines_with(rlog, "req 127.0.0.1 GET /"))
      assert.same({}, lines_with(plog, "direct-allowed"))
    end)

    it("sends a host not in no_proxy through the proxy", function()
      assert(v, "no result")
      proxied(v, plog, rlog, "not-listed", "http://other.test")
    end)
  end)

  describe("with HTTP_PROXY and HTTPS_PROXY (upper case)", function()
    local v, plog, rlog
    setup(function()
      v, plog, rlog = scenario([==[
local out = three({ { "upper-http", ("http://localhost:%s"):format(recv_port) } }, { proxy = "env", allow_private = true })
out.https = one(postback.fire("https://postback.test/upper-https", nil, opts { proxy = "env" }))
return out
]==], { HTTP_PROXY = "http://127.0.0.1:PROXY_PORT", HTTPS_PROXY = "http://127.0.0.1:PROXY_PORT" })
    end)

    it("uses HTTPS_PROXY for https, and never HTTP_PROXY (as libcurl)", function()
      assert(v, "no result")
      for _, way in ipairs { "fire", "many", "disp" } do
        local r = v["upper-http"][way]
        assert.is_true(r.ok, way .. ": " .. tostring(r.err and (r.err.text or r.err.message)))
      end
      assert.equal(3, #lines_with(rlog, "upper-http"))
      assert.same({}, lines_with(plog, "upper-http"))
      -- the stand-in answers CONNECT with a plain 200: no TLS follows
      assert.is_false(v.https.ok)
      assert.same({ "req 127.0.0.1 CONNECT postback.test:443" }, lines_with(plog, "CONNECT"))
    end)
  end)

  describe("with all_proxy", function()
    local v, plog, rlog
    setup(function()
      v, plog, rlog = scenario([==[
return three({ { "all", "http://postback.test" } }, { proxy = "env" })
]==], { all_proxy = "http://127.0.0.1:PROXY_PORT" })
    end)

    it("sends a URL of any scheme through it", function()
      assert(v, "no result")
      proxied(v, plog, rlog, "all", "http://postback.test")
    end)
  end)
end)

describe("a proxy with CR or LF", function()
  local core = require "postback.core"
  local WHY = "credentials, user agent or proxy contain CR, LF or NUL"

  it("is refused, with the same reason, for the engine and for one request", function()
    for _, bad in ipairs { "http://p:3128\r\nX-A: b", "http://p\n", "http://p\r" } do
      local ok, err = pcall(core.engine, { proxy = bad })
      assert.is_false(ok, ("%q"):format(bad))
      assert.equal("cannot create the engine: " .. WHY, err)
      local e = core.engine {}
      assert.same({ nil, WHY }, { e:add({ url = "http://127.0.0.1:9/x", proxy = bad }, 1) })
      e:close()
    end
  end)
end)
