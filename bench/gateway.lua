-- The OpenResty gateway (examples/openresty, laid out as the README says,
-- worker_processes auto) under bursts of conversions: each conversion has 3
-- approved postbacks to a loopback nginx that answers 204 and logs them.
-- For 16, 32 and 64 clients: TOTAL conversions (a LuaJIT client pool that
-- counts every answer, spec/support/loadgen.lua), and the same nginx
-- serving /health to the same clients; best of ROUNDS. Prints conversions
-- answered per second, the ratio to /health, and checks every burst: each
-- conversion answered 202 has its 3 postbacks at the receiver, every other
-- request got 503 or 429, none went unanswered. Then one burst from 32
-- clients with a reload (HUP) halfway, checked the same way.
--
--   make bench   (or: lua5.4 bench/gateway.lua [TOTAL] [ROUNDS])
package.path = "spec/support/?.lua;" .. package.path
local postback = require "postback"
local cjson = require("cjson.safe")
local gatewayproc = require "gatewayproc"
local mockproc = require "mockproc"
local nginxproc = require "nginxproc"
local socket = require "socket"

local TOTAL = tonumber(arg[1]) or 3000
local ROUNDS = tonumber(arg[2]) or 3
local HALF = math.floor(TOTAL / 2)

assert(gatewayproc.available(), "nginx with ngx_http_lua is needed")
assert(os.execute("make -s LUA=luajit >/dev/null"), "cannot build postback for LuaJIT")

local recv = nginxproc.start {
  http = "log_format pb '$arg_click_id $arg_aff';",
  locations = "access_log logs/pb.log pb; location / { return 204; }",
}
local mock = mockproc.start { network = "gw", api_key = "gw-key" }
local c = assert(postback.client(mock:client_opts()))
for aff = 1, 3 do
  assert(c:create { offer_id = 1, affiliate_id = aff, type = 2, code = recv.url .. "/pb?click_id={click_id}&aff={aff_id}" })
end
c:close()
local gw = gatewayproc.start { env = { OFFERSLOOK_NETWORK = "gw", OFFERSLOOK_API_KEY = "gw-key",
  OFFERSLOOK_BASE_URL = mock.url, POSTBACK_ALLOW_PRIVATE = "1" } }

local function burst(path, clients, extra)
  local out = os.tmpname()
  local p = assert(io.popen(("luajit spec/support/loadgen.lua --port %d --path '%s' --total %d --clients %d --out %s %s")
    :format(gw.port, path, TOTAL, clients, out, extra or "")))
  local summary = assert(cjson.decode(p:read("*a")), "the load generator failed")
  p:close()
  local statuses = {}
  for line in io.lines(out) do
    local i, st = line:match("^(%d+) (%S+)")
    statuses[tonumber(i)] = tonumber(st) or st
  end
  os.remove(out)
  return summary, statuses
end

-- Every 202 delivered (waiting up to 30 s), nothing for the rest: accepted,
-- or nil and what is wrong.
local function check(tag, statuses, summary)
  if summary.noanswer > 0 then return nil, summary.noanswer .. " requests without an answer" end
  local deadline = socket.gettime() + 30
  while true do
    local got = {}
    for line in io.lines(recv.prefix .. "/logs/pb.log") do
      local click, aff = line:match("^(%S+) (%S+)")
      if click and click:sub(1, #tag) == tag then
        got[click] = got[click] or {}
        got[click][aff] = true
      end
    end
    local accepted, missing = 0, 0
    for i = 1, TOTAL do
      local st, p = statuses[i], got[tag .. i]
      if st == 202 then
        accepted = accepted + 1
        if not (p and p["1"] and p["2"] and p["3"]) then missing = missing + 1 end
      elseif st ~= 503 and st ~= 429 then
        return nil, ("request %d answered %s"):format(i, tostring(st))
      elseif p then
        return nil, ("postbacks sent for conversion %d, answered %s"):format(i, tostring(st))
      end
    end
    if missing == 0 then return accepted end
    if socket.gettime() > deadline then return nil, missing .. " accepted conversions not fully delivered" end
    socket.sleep(0.1)
  end
end

local failed = false
local round = 0
print(("gateway: %d conversions a burst, 3 postbacks each, best of %d"):format(TOTAL, ROUNDS))
print(("%-10s %14s %14s %8s %10s"):format("clients", "conversions/s", "/health/s", "ratio", "accepted"))
for _, clients in ipairs { 16, 32, 64 } do
  local best, best_health, acc = 0, 0, 0
  for _ = 1, ROUNDS do
    round = round + 1
    local health = burst("/health?i={i}", clients)
    local tag = ("r%d-"):format(round)
    local summary, statuses = burst("/conversion?offer_id=1&payout=2.5&click_id=" .. tag .. "{i}", clients)
    local accepted, why = check(tag, statuses, summary)
    if not accepted then
      print("  FAILED: " .. why)
      failed = true
    end
    if summary.rate > best then best, acc = summary.rate, accepted or 0 end
    best_health = math.max(best_health, health.rate)
  end
  print(("%-10d %14.0f %14.0f %8.2f %10d"):format(clients, best, best_health, best / best_health, acc))
  print(("gateway ratio %d clients: %.2f"):format(clients, best / best_health))
end

local summary, statuses = burst("/conversion?offer_id=1&click_id=hup-{i}", 32,
  ("--hup-at %d --hup-pid %d"):format(HALF, gw:pid()))
local accepted, why = check("hup-", statuses, summary)
print(("reload halfway, 32 clients: %s of %d accepted and delivered, %d unanswered, %.0f conversions/s")
  :format(accepted and tostring(accepted) or ("FAILED (" .. why .. ")"), TOTAL, summary.noanswer, summary.rate))
if not accepted then failed = true end
local log = gw:error_log()
if log:find("worker_connections are not enough", 1, true) then
  print("FAILED: nginx ran out of worker_connections")
  failed = true
end

gw:stop()
mock:stop()
recv:stop()
if failed then os.exit(1) end
