-- The destination policy, end to end (issue 14's acceptance): fire,
-- fire_many, the dispatcher and `postback fire` refuse every destination
-- that is not global unicast, with code "blocked_address", and nothing
-- reaches the receiver; allow_private and allow_networks let exactly what
-- they name through.
--
-- The receiver (spec/support/countrecv.lua) logs every connection it
-- accepts. Where the machine permits it (root, `unshare -n`), everything
-- runs in a private network namespace where 10.0.0.1, 192.168.1.1,
-- 100.64.0.1 and 169.254.169.254 live on lo beside 127.0.0.1 and ::1, the
-- receiver listening on all of them; with `unshare -m` too, /etc/hosts is
-- bind-mounted there so that names resolve to private addresses. Elsewhere
-- the loopback cases run on the machine's own loopback and the others are
-- pending, with the reason.
--
-- Every scenario runs in one child process (in the namespace), in two
-- phases: first every refusal, after which the receiver's log must be
-- empty; then what is allowed, each delivery found in the log by its path,
-- which shows the refused addresses were reachable all along.
local child = require "child"
local testenv = require "testenv"

local quote = child.quote
-- no proxy in the environment: proxy = "env" then means none
local NOPROXY = "env -u http_proxy -u HTTP_PROXY -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY "
local PRIVATE = { "10.0.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254" }

local function sh(cmd)
  local ok = os.execute("{ " .. cmd .. "; } >/dev/null 2>&1")
  return ok == true or ok == 0
end

local NS_SETUP = "ip link set lo up"
for _, a in ipairs(PRIVATE) do NS_SETUP = NS_SETUP .. " && ip addr add " .. a .. "/32 dev lo" end

-- The hosts file seen in the namespace.
local HOSTS = "127.0.0.1 localhost\n::1 localhost\n10.0.0.1 private.test\n169.254.169.254 metadata.test\n"

-- What this machine permits: a network namespace, and a mount namespace.
local function probe()
  if not sh("command -v unshare && command -v ip") then
    return nil, nil, "unshare or ip is not installed", "unshare or ip is not installed"
  end
  if not sh("unshare -n sh -c " .. quote(NS_SETUP)) then
    local why = "a private network namespace is not permitted here (unshare -n needs root)"
    return nil, nil, why, why
  end
  local hosts = os.tmpname()
  local f = assert(io.open(hosts, "w"))
  f:write(HOSTS)
  f:close()
  local mount = sh("unshare -m -n sh -c " .. quote("mount --bind " .. hosts .. " /etc/hosts && grep -q private.test /etc/hosts"))
  if not mount then
    os.remove(hosts)
    return true, nil, nil, "a mount namespace with a bind-mounted /etc/hosts is not permitted here (unshare -m)"
  end
  return true, hosts
end

local NETNS, HOSTS_FILE, NETNS_WHY, DNS_WHY = probe()

-- The refused destinations: {host as written in the URL, the address the
-- error names (nil: either of several), netns only}.
local CASES = {
  { "10.0.0.1", "10.0.0.1", true },
  { "192.168.1.1", "192.168.1.1", true },
  { "100.64.0.1", "100.64.0.1", true },
  { "169.254.169.254", "169.254.169.254", true },
  { "127.0.0.1", "127.0.0.1" },
  { "localhost", nil },
  { "[::1]", "::1" },
  { "2130706433", "127.0.0.1" },
  { "[::ffff:127.0.0.1]", "::ffff:127.0.0.1" },
  { "0.0.0.0", "0.0.0.0" },
  { "0177.0.0.1", "127.0.0.1" },
  { "127.1", "127.0.0.1" },
}

-- The scenario, in the child: args netns ("1"/"0"), dns ("1"/"0"), the
-- interpreter for bin/postback, the cases as "host address" lines.
local SCENARIO = [==[
local netns, dns, lua, case_lines = ...
netns, dns = netns == "1", dns == "1"
local postback = require "postback"
local core = require "postback.core"
local countrecv = require "countrecv"

local cases = {}
for line in case_lines:gmatch("[^\n]+") do
  local host = line:match("^(%S+)")
  cases[#cases + 1] = host
end

local recv = countrecv.start(netns and { "0.0.0.0", "::" } or { "127.0.0.1", "::1" }, { lifetime = 90 })
local port = recv.port
local function url(host, path) return ("http://%s:%d%s"):format(host, port, path) end
local function enc(s) return (s:gsub("[^%w]", function(c) return ("%%%02X"):format(c:byte()) end)) end
-- retries would show: a refusal is never retried
local BASE = { retries = 2, backoff_base = 0.01, backoff_max = 0.02, timeout = 5, connect_timeout = 3 }
local function opts(extra)
  local o = {}
  for k, v in pairs(BASE) do o[k] = v end
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end
local function one(r, err) return { ok = r ~= nil, status = r and r.status, err = err } end
local function item(r) return { ok = r.ok, status = r.status, err = r.error } end
local function cli(args)
  local p = io.popen(("%s bin/postback fire %s 2>&1; echo \"RC=$?\""):format(lua, args))
  local text = p:read("*a")
  p:close()
  local body, rc = text:match("^(.-)RC=(%d+)%s*$")
  return { rc = tonumber(rc), out = body or text }
end
local function dispatch(o, urls)
  local got = {}
  local d = postback.dispatcher(o)
  local ids = {}
  for i, u in ipairs(urls) do
    local id, err = d:fire(u)
    if id then ids[id] = i else got[i] = { queued = false, err = err } end
  end
  local t0 = core.now()
  while d:pending() > 0 and core.now() - t0 < 20 do d:poll(0.05) end
  d:close()
  return got, ids
end

local out = { port = port }

-- Phase 1: refusals only. The receiver must log nothing at all.
out.fire, out.many, out.disp = {}, {}, {}
local urls = {}
for i, host in ipairs(cases) do
  out.fire[i] = one(postback.fire(url(host, "/fire/" .. i), nil, opts()))
  urls[i] = url(host, "/many/" .. i)
end
for i, r in ipairs(postback.fire_many(urls, opts { concurrency = 4 })) do out.many[i] = item(r) end
do
  local results, durls = {}, {}
  for i, host in ipairs(cases) do durls[i] = url(host, "/disp/" .. i) end
  local queued, ids = dispatch(opts { on_result = function(r) results[#results + 1] = r end }, durls)
  for i in ipairs(cases) do out.disp[i] = queued[i] or { queued = true } end
  for _, r in ipairs(results) do
    local i = ids[r.id]
    if i then out.disp[i].result = item(r) end
  end
end
-- allow_networks naming other ranges
out.other = {
  ["127.0.0.1 with 10.0.0.0/8"] = one(postback.fire(url("127.0.0.1", "/other/1"), nil,
    opts { allow_networks = { "10.0.0.0/8" } })),
  ["127.0.0.1 with ::1/128"] = one(postback.fire(url("127.0.0.1", "/other/2"), nil,
    opts { allow_networks = { "::1/128" } })),
  ["[::1] with 127.0.0.0/8"] = one(postback.fire(url("[::1]", "/other/3"), nil,
    opts { allow_networks = { "127.0.0.0/8" } })),
  ["0.0.0.0 with 127.0.0.0/8"] = one(postback.fire(url("0.0.0.0", "/other/4"), nil,
    opts { allow_networks = { "127.0.0.0/8" } })),
  ["127.0.0.2 with 127.0.0.1/32"] = one(postback.fire(url("127.0.0.2", "/other/5"), nil,
    opts { allow_networks = { "127.0.0.1/32" } })),
}
if netns then
  out.other["192.168.1.1 with 10.0.0.0/8"] = one(postback.fire(url("192.168.1.1", "/other/6"), nil,
    opts { allow_networks = { "10.0.0.0/8" } }))
  out.other["169.254.169.254 with 10.0.0.0/8, fire_many"] = item(postback.fire_many(
    { url("169.254.169.254", "/other/7") }, opts { allow_networks = { "10.0.0.0/8" } })[1])
end
if dns then
  out.dns_fire = one(postback.fire(url("private.test", "/dns/1"), nil, opts()))
  out.dns_many = item(postback.fire_many({ url("metadata.test", "/dns/2") }, opts())[1])
  out.dns_other = one(postback.fire(url("private.test", "/dns/3"), nil, opts { allow_networks = { "192.168.0.0/16" } }))
end
out.cli_refused = cli(url("127.0.0.1", "/cli/refused") .. " --retries 2")
if netns then out.cli_refused_private = cli(url("10.0.0.1", "/cli/refused") .. " --allow-network 192.168.0.0/16") end
core.sleep(0.3) -- a connection made after all would be logged by now
out.phase1_log = recv:lines()

-- Phase 2: what is allowed is delivered (so the refused addresses were reachable).
out.allowed, out.many_allowed, out.disp_allowed = {}, {}, {}
urls = {}
for i, host in ipairs(cases) do
  out.allowed[i] = one(postback.fire(url(host, "/allowed/" .. i), nil, opts { allow_private = true }))
  urls[i] = url(host, "/many-allowed/" .. i)
end
for i, r in ipairs(postback.fire_many(urls, opts { concurrency = 4, allow_private = true })) do
  out.many_allowed[i] = item(r)
end
do
  local results = {}
  local durls = {}
  for i, host in ipairs(cases) do durls[i] = url(host, "/disp-allowed/" .. i) end
  local _, ids = dispatch(opts { allow_private = true, on_result = function(r) results[#results + 1] = r end }, durls)
  for _, r in ipairs(results) do
    local i = ids[r.id]
    if i then out.disp_allowed[i] = item(r) end
  end
end
out.net127 = {}
for k, host in ipairs { "127.0.0.1", "localhost", "2130706433", "[::ffff:127.0.0.1]", "0177.0.0.1", "127.1" } do
  out.net127[k] = one(postback.fire(url(host, "/net127/" .. k), nil, opts { allow_networks = { "127.0.0.0/8" } }))
  out.net127[k].host = host
end
out.net127_many = item(postback.fire_many({ url("127.0.0.1", "/net127-many") },
  opts { allow_networks = { "127.0.0.0/8" } })[1])
out.net_v6 = one(postback.fire(url("[::1]", "/net-v6"), nil, opts { allow_networks = { "::1/128" } }))
if netns then
  out.net10 = one(postback.fire(url("10.0.0.1", "/net10"), nil, opts { allow_networks = { "10.0.0.0/8" } }))
end

-- A redirect from an allowed receiver to one that is not.
local from, to = "127.0.0.1", "[::1]"
local from_net, to_net = "127.0.0.1/32", "::1/128"
if netns then from, to, from_net, to_net = "10.0.0.1", "192.168.1.1", "10.0.0.1/32", "192.168.1.1/32" end
out.redirect_from, out.redirect_to = from, to:gsub("[%[%]]", "")
local before = #recv:lines()
local hop = url(from, "/to?u=" .. enc(url(to, "/landing-refused")))
out.redirect = one(postback.fire(hop, nil, opts { follow = 1, allow_networks = { from_net } }))
local hop_many = url(from, "/to?u=" .. enc(url(to, "/landing-refused-many")))
out.redirect_many = item(postback.fire_many({ hop_many }, opts { follow = 1, allow_networks = { from_net } })[1])
core.sleep(0.2)
out.redirect_log = { select(before + 1, (table.unpack or unpack)(recv:lines())) }
out.redirect_ok = one(postback.fire(url(from, "/to?u=" .. enc(url(to, "/landing-ok"))), nil,
  opts { follow = 1, allow_networks = { from_net, to_net } }))

-- Proxies: with proxy = URL only an IP-literal host can be checked (the
-- proxy resolves names); proxy = "env" with no proxy in the environment
-- connects directly, so the policy holds as without one.
out.proxy_literal = one(postback.fire(url("127.0.0.1", "/proxy-literal"), nil,
  opts { proxy = ("http://127.0.0.1:%d"):format(port) }))
out.proxy_env = one(postback.fire(url("127.0.0.1", "/proxy-env"), nil, opts { proxy = "env" }))

if dns then
  out.dns_allowed = one(postback.fire(url("private.test", "/dns-allowed"), nil,
    opts { allow_networks = { "10.0.0.1/32" } }))
end
out.cli_private = cli(url("127.0.0.1", "/cli/allow-private") .. " --allow-private")
out.cli_network = cli(url("127.0.0.1", "/cli/allow-network") .. " --allow-network 127.0.0.0/8")
core.sleep(0.2)
out.log = recv:lines()
recv:stop()
return out
]==]

describe("destination policy (real receivers)", function()
  local r, v, lines

  setup(function()
    local case_lines = {}
    for _, c in ipairs(CASES) do
      if NETNS or not c[3] then case_lines[#case_lines + 1] = c[1] end
    end
    local wrap = function(cmd) return NOPROXY .. cmd end
    if NETNS then
      local pre = (HOSTS_FILE and ("mount --bind " .. HOSTS_FILE .. " /etc/hosts && ") or "") .. NS_SETUP
      wrap = function(cmd)
        return ("%sunshare %s sh -c %s"):format(NOPROXY, HOSTS_FILE and "-m -n" or "-n", quote(pre .. " && " .. cmd))
      end
    end
    r = child.run(SCENARIO, { args = { NETNS and "1" or "0", HOSTS_FILE and "1" or "0", testenv.lua,
                                       table.concat(case_lines, "\n") }, limit = 120, wrap = wrap })
    v = r.value
    lines = v and v.log or {}
  end)

  teardown(function()
    if HOSTS_FILE then os.remove(HOSTS_FILE) end
  end)

  local function ran()
    assert(not r.timed_out, "the scenario never finished (killed at its time limit)")
    assert(r.raised == nil, "the scenario failed: " .. tostring(r.raised))
    return v
  end

  -- Log lines that start with prefix.
  local function count(log, prefix)
    local n = 0
    for _, l in ipairs(log) do if l:sub(1, #prefix) == prefix then n = n + 1 end end
    return n
  end

  -- Requests the receiver got for a path (any address).
  local function got(path)
    local n = 0
    for _, l in ipairs(lines) do
      if l:match("^req %S+ GET (%S+)$") == path then n = n + 1 end
    end
    return n
  end

  local function is_blocked(e, address, label)
    assert(type(e) == "table", label .. ": no error")
    assert.equal("blocked_address", e.code, label .. ": " .. tostring(e.text))
    assert.equal("validation", e.kind, label)
    assert.is_false(e.retryable, label)
    assert.equal(1, e.attempts, label .. ": a refusal was retried")
    if address then
      assert.equal(address, e.address, label)
      assert.truthy(e.message:find(address, 1, true), label .. ": the message does not name " .. address)
    end
    assert.truthy(e.message:find("allow_private", 1, true), label .. ": the message does not say how to allow it")
  end

  -- The index of a case in the run (nil when it did not run here).
  local function index_of(host)
    local i = 0
    for _, c in ipairs(CASES) do
      if NETNS or not c[3] then
        i = i + 1
        if c[1] == host then return i end
      end
    end
  end

  it("refuses everything before any connection: the receiver logged nothing in the first phase", function()
    local out = ran()
    assert.same({}, out.phase1_log)
  end)

  for _, c in ipairs(CASES) do
    local host, address, netns_only = c[1], c[2], c[3]

    it(("fire, fire_many and the dispatcher refuse %s with blocked_address"):format(host), function()
      if netns_only and not NETNS then return pending(NETNS_WHY) end
      local out, i = ran(), index_of(host)
      local f = out.fire[i]
      assert.is_false(f.ok, "fire delivered to " .. host)
      is_blocked(f.err, address, "fire " .. host)
      if not address then
        assert.truthy(f.err.address == "127.0.0.1" or f.err.address == "::1", tostring(f.err.address))
      end
      assert.is_false(out.many[i].ok, "fire_many delivered to " .. host)
      is_blocked(out.many[i].err, address, "fire_many " .. host)
      local d = out.disp[i]
      assert.is_true(d.queued, "d:fire refused at once: " .. tostring(d.err and d.err.text))
      assert(d.result, "the dispatcher's on_result never got " .. host)
      assert.is_false(d.result.ok)
      is_blocked(d.result.err, address, "dispatcher " .. host)
      for _, path in ipairs { "/fire/", "/many/", "/disp/" } do assert.equal(0, got(path .. i)) end
    end)

    it(("allow_private = true lets %s through: it was reachable"):format(host), function()
      if netns_only and not NETNS then return pending(NETNS_WHY) end
      local out, i = ran(), index_of(host)
      assert.is_true(out.allowed[i].ok, "fire: " .. tostring(out.allowed[i].err and out.allowed[i].err.text))
      assert.equal(200, out.allowed[i].status)
      assert.is_true(out.many_allowed[i].ok, "fire_many: " .. tostring(out.many_allowed[i].err and out.many_allowed[i].err.text))
      assert(out.disp_allowed[i], "the dispatcher's on_result never got " .. host)
      assert.is_true(out.disp_allowed[i].ok, "dispatcher: " .. tostring(out.disp_allowed[i].err and out.disp_allowed[i].err.text))
      assert.equal(1, got("/allowed/" .. i))
      assert.equal(1, got("/many-allowed/" .. i))
      assert.equal(1, got("/disp-allowed/" .. i))
    end)
  end

  it('allow_networks = {"127.0.0.0/8"} lets loopback through, IPv4 in any spelling and IPv4-mapped', function()
    local out = ran()
    assert.equal(6, #out.net127)
    for k, res in ipairs(out.net127) do
      assert.is_true(res.ok, res.host .. ": " .. tostring(res.err and res.err.text))
      assert.equal(1, got("/net127/" .. k), res.host)
    end
    assert.is_true(out.net127_many.ok, tostring(out.net127_many.err and out.net127_many.err.text))
    assert.equal(1, got("/net127-many"))
    assert.is_true(out.net_v6.ok, 'allow_networks = {"::1/128"}: ' .. tostring(out.net_v6.err and out.net_v6.err.text))
    assert.equal(1, got("/net-v6"))
  end)

  it("allow_networks naming another range lets nothing else through", function()
    local out = ran()
    local n = 0
    for label, res in pairs(out.other) do
      n = n + 1
      assert.is_false(res.ok, label .. " was delivered")
      is_blocked(res.err, nil, label)
    end
    assert.equal(NETNS and 7 or 5, n)
    for k = 1, 7 do assert.equal(0, got("/other/" .. k)) end
  end)

  it('allow_networks = {"10.0.0.0/8"} lets 10.0.0.1 through and not 192.168.1.1', function()
    if not NETNS then return pending(NETNS_WHY) end
    local out = ran()
    assert.is_true(out.net10.ok, tostring(out.net10.err and out.net10.err.text))
    assert.equal(1, got("/net10"))
    assert.is_false(out.other["192.168.1.1 with 10.0.0.0/8"].ok)
  end)

  it("a redirect (follow = 1) from an allowed receiver to a private one reaches only the first", function()
    local out = ran()
    local log = out.redirect_log
    assert.equal(0, count(log, "conn " .. out.redirect_to), "the redirect reached " .. out.redirect_to)
    assert.is_false(out.redirect.ok)
    assert.is_false(out.redirect_many.ok)
    -- with both allowed, the same redirect is followed: the target was reachable
    assert.is_true(out.redirect_ok.ok, tostring(out.redirect_ok.err and out.redirect_ok.err.text))
    assert.equal(1, got("/landing-ok"))
    assert.equal(0, got("/landing-refused"))
    assert.equal(0, got("/landing-refused-many"))
  end)

  it("a redirect to a private address is a blocked_address error, not retried", function()
    local out = ran()
    is_blocked(out.redirect.err, out.redirect_to, "fire, redirect")
    is_blocked(out.redirect_many.err, out.redirect_to, "fire_many, redirect")
    -- the first hop once each: a refusal is final
    local hops = 0
    for _, l in ipairs(out.redirect_log) do
      if l:find("^req " .. out.redirect_from:gsub("%.", "%%.") .. " GET /to%?") then hops = hops + 1 end
    end
    assert.equal(2, hops, "the first hop was fetched " .. hops .. " times for 2 postbacks")
  end)

  it("refuses a name that resolves to a private address, and allows it when its network is allowed", function()
    if not NETNS then return pending(NETNS_WHY) end
    if not HOSTS_FILE then return pending(DNS_WHY) end
    local out = ran()
    assert.is_false(out.dns_fire.ok)
    is_blocked(out.dns_fire.err, "10.0.0.1", "private.test")
    assert.equal(("private.test:%d"):format(out.port), out.dns_fire.err.host)
    assert.is_false(out.dns_many.ok)
    is_blocked(out.dns_many.err, "169.254.169.254", "metadata.test")
    is_blocked(out.dns_other.err, "10.0.0.1", "private.test with 192.168.0.0/16")
    assert.is_true(out.dns_allowed.ok, tostring(out.dns_allowed.err and out.dns_allowed.err.text))
    assert.equal(1, got("/dns-allowed"))
    for k = 1, 3 do assert.equal(0, got("/dns/" .. k)) end
  end)

  it("postback fire: a private destination exits 1 with one line naming it; the flags allow it", function()
    local out = ran()
    local function one_line(res, label)
      assert.equal(1, res.rc, label .. ": " .. res.out)
      assert.equal(1, select(2, res.out:gsub("\n", "")), label .. ": not one line: " .. res.out)
      assert.truthy(res.out:find("blocked_address", 1, true), res.out)
      assert.is_nil(res.out:find("%.lua:%d"), res.out)
      assert.truthy(res.out:find("--allow-private", 1, true), res.out)
    end
    one_line(out.cli_refused, "127.0.0.1")
    assert.truthy(out.cli_refused.out:find("127.0.0.1 is a loopback address", 1, true), out.cli_refused.out)
    assert.truthy(out.cli_refused.out:find("--allow-network 127.0.0.1/32", 1, true), out.cli_refused.out)
    if NETNS then
      one_line(out.cli_refused_private, "10.0.0.1 with --allow-network 192.168.0.0/16")
      assert.truthy(out.cli_refused_private.out:find("10.0.0.1 is a private address", 1, true))
    end
    assert.equal(0, got("/cli/refused"))
    assert.equal(0, out.cli_private.rc, out.cli_private.out)
    assert.equal(1, got("/cli/allow-private"))
    assert.equal(0, out.cli_network.rc, out.cli_network.out)
    assert.equal(1, got("/cli/allow-network"))
  end)

  it("with proxy = URL, refuses an IP-literal private host before asking the proxy", function()
    local out = ran()
    assert.is_false(out.proxy_literal.ok, "fired through the proxy")
    is_blocked(out.proxy_literal.err, "127.0.0.1", "proxy = URL")
    assert.equal(0, got("/proxy-literal"))
    assert.equal(0, got(("http://127.0.0.1:%d/proxy-literal"):format(out.port)))
  end)

  it('with proxy = "env" and no proxy in the environment, refuses as without a proxy', function()
    local out = ran()
    assert.is_false(out.proxy_env.ok, "proxy = \"env\" without a proxy fired at 127.0.0.1")
    is_blocked(out.proxy_env.err, "127.0.0.1", "proxy = env")
    assert.equal(0, got("/proxy-env"))
  end)

  it("every connection the receiver accepted carried a request that was allowed", function()
    ran()
    assert.equal(count(lines, "conn "), count(lines, "req "))
  end)
end)

describe("destination policy options", function()
  local postback = require "postback"
  local URL = "http://127.0.0.1:9/never"

  it("raise for wrong types, naming the option", function()
    assert.has_error(function() postback.fire(URL, nil, { allow_private = "yes" }) end,
      "bad argument #3 to 'fire' (option allow_private must be true or false)")
    assert.has_error(function() postback.fire(URL, nil, { allow_networks = "10.0.0.0/8" }) end,
      "bad argument #3 to 'fire' (option allow_networks must be a list of CIDRs)")
    assert.has_error(function() postback.fire_many({ URL }, { allow_networks = { 10 } }) end,
      "bad argument #2 to 'fire_many' (option allow_networks must list CIDR strings)")
    assert.has_error(function() postback.dispatcher { allow_userinfo = 1 } end)
  end)

  it("raise for a network that does not parse, as a bad argument of the call", function()
    for _, call in ipairs {
      { "bad argument #3 to 'fire'", function(o) return postback.fire(URL, nil, o) end },
      { "bad argument #2 to 'fire_many'", function(o) return postback.fire_many({ URL }, o) end },
      { "bad argument #1 to 'dispatcher'", function(o) return postback.dispatcher(o) end },
    } do
      for _, bad in ipairs { "10.0.0.0/33", "banana", "10.0.0.1/8" } do
        local ok, msg = pcall(call[2], { allow_networks = { bad } })
        assert.is_false(ok, bad .. " was accepted")
        msg = tostring(msg)
        assert.equal(call[1], msg:sub(1, #call[1]), msg)
        assert.truthy(msg:find(bad, 1, true), msg)
      end
    end
  end)
end)

-- DNS rebinding: a name whose answer changes between lookups, an allowed
-- address one time and a refused one the next. Every connection is checked
-- at the address it is made to, so nothing reaches the refused one,
-- whatever the name said before. Runs in the namespaces, where the system
-- resolver asks spec/support/dnsserver.lua (bind-mounted resolv.conf).
local REBIND = [==[
local postback = require "postback"
local countrecv = require "countrecv"
local dns = require("dnsserver").start({ ["rebind.test"] = { "10.0.0.1", "192.168.1.1" } },
                                       { port = 53, rotate = true })
local recv = countrecv.start({ "0.0.0.0" }, { lifetime = 60 })
local out = { fire = {} }
for i = 1, 8 do
  local r, err = postback.fire(("http://rebind.test:%d/r%d"):format(recv.port, i), nil,
    { allow_networks = { "10.0.0.1/32" }, retries = 0, timeout = 5, connect_timeout = 3 })
  out.fire[i] = { ok = r ~= nil and r.ok, code = err and err.code, address = err and err.address }
end
out.log = recv:lines()
recv:stop()
dns:stop()
return out
]==]

describe("destination policy against DNS rebinding", function()
  it("checks each connection's own address: the refused answer is never reached", function()
    if not (NETNS and HOSTS_FILE) then return pending(DNS_WHY or NETNS_WHY) end
    local fixtures = require "fixtures"
    local hosts, resolv = os.tmpname(), os.tmpname()
    fixtures.writefile(hosts, HOSTS)
    fixtures.writefile(resolv, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    local pre = ("mount --bind %s /etc/hosts && mount --bind %s /etc/resolv.conf && %s"):format(
      quote(hosts), quote(resolv), NS_SETUP)
    local r = child.run(REBIND, { limit = 90, wrap = function(cmd)
      return ("%sunshare -m -n sh -c %s"):format(NOPROXY, quote(pre .. " && " .. cmd))
    end })
    os.remove(hosts)
    os.remove(resolv)
    assert(not r.timed_out, "the scenario never finished")
    assert(r.raised == nil, "the scenario failed: " .. tostring(r.raised))
    local delivered, refused = 0, 0
    for i, one in ipairs(r.value.fire) do
      if one.ok then
        delivered = delivered + 1
      else
        assert.equal("blocked_address", one.code, "fire " .. i)
        assert.equal("192.168.1.1", one.address, "fire " .. i)
        refused = refused + 1
      end
    end
    -- the name did change between lookups: both answers were seen
    assert.is_true(delivered > 0 and refused > 0, ("%d delivered, %d refused"):format(delivered, refused))
    local at_allowed = 0
    for _, l in ipairs(r.value.log) do
      assert.falsy(l:find("192.168.1.1", 1, true), "reached the refused address: " .. l)
      if l:match("^req 10%.0%.0%.1 GET /r%d$") then at_allowed = at_allowed + 1 end
    end
    assert.equal(delivered, at_allowed)
  end)
end)
