-- Firing benchmark: N GETs at concurrency C against a loopback nginx that
-- answers 204, two workloads, every contender measured in the same run:
--   unique   every item its own URL with macros: {url = base .. "?n=i&..{click_id}..", values = {...}}
--   shared   one template for all: {url = code, values = {...}}
-- Contenders, on each workload:
--   * fire_many (rendering included);
--   * libcurl's own multi loop in plain C (bench/multi_c.c, the ceiling of
--     postback's design): reused handles, no scripting, the same request
--     options as postback's engine, a distinct URL per request for `unique`;
--   * a hand-written Lua-cURLv3 loop (reused easy handles on one multi,
--     rendering with string.format and a percent-encoder), when Lua-cURLv3's
--     lcurl module can be loaded (LUA_CPATH / LCURL_CPATH); skipped with a
--     note where it cannot;
--   * the dispatcher: d:fire every item, then poll until done (shared).
-- And the HTTP ceiling of the machine, for reference: curl --parallel and wrk.
-- The items are built before the clock starts (the caller's work, not
-- fire_many's). Each contender runs ROUNDS times, interleaved; the best
-- rate counts, and CPU per request (os.clock / the C loop's own) is shown.
-- Also: the cost of dispatcher:poll(0) with 1,000 transfers in flight.
--
--   make bench   (or: lua5.4 bench/fire.lua [N] [CONCURRENCY] [ROUNDS])
package.path = "spec/support/?.lua;" .. package.path
local lcurl_cpath = os.getenv("LCURL_CPATH")
if lcurl_cpath then package.cpath = lcurl_cpath .. ";" .. package.cpath end
local postback = require "postback"
local core = require "postback.core"
local socket = require "socket"
local nginxproc = require "nginxproc"

local N = tonumber(arg[1]) or 20000
local C = tonumber(arg[2]) or 64
local ROUNDS = tonumber(arg[3]) or 5

local ngx = nginxproc.start { locations = "location / { return 204; }" }
local base = ngx.url .. "/postback"
local code = base .. "?click_id={click_id}&payout={payout}&aff_sub1={aff_sub1}"
local sample = base .. "?click_id=c-000123&payout=1.25&aff_sub1=spring%20sale"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local items = { unique = {}, shared = {} }
for i = 1, N do
  local values = { click_id = ("c-%06d"):format(i), payout = 1.25, aff_sub1 = "spring sale" }
  items.unique[i] = { url = base .. "?n=" .. i .. "&click_id={click_id}&payout={payout}&aff_sub1={aff_sub1}",
                      values = values }
  items.shared[i] = { url = code, values = values }
end

local cpu = {} -- best CPU microseconds per request

local function keep_cpu(name, us)
  if not cpu[name] or us < cpu[name] then cpu[name] = us end
end

local FIRE_OPTS = { concurrency = C, retries = 0, allow_private = true }

local function fire_many_rate(workload)
  return function(name)
    collectgarbage()
    local t0, c0 = core.now(), os.clock()
    local results = postback.fire_many(items[workload], FIRE_OPTS)
    local dt = core.now() - t0
    keep_cpu(name, (os.clock() - c0) / N * 1e6)
    for i = 1, N do assert(results[i].ok, "fire_many: a postback failed") end
    return N / dt
  end
end

local function dispatcher_rate(name)
  collectgarbage()
  local t0, c0 = core.now(), os.clock()
  local d = postback.dispatcher(FIRE_OPTS)
  local list = items.shared
  for i = 1, N do assert(d:fire(list[i].url, list[i].values)) end
  assert(d:wait(60))
  local dt = core.now() - t0
  keep_cpu(name, (os.clock() - c0) / N * 1e6)
  assert(d:stats().delivered == N, "dispatcher: not every postback delivered")
  d:close()
  return N / dt
end

local function multi_c_rate(workload)
  return function(name)
    local out = sh(("build/bench/multi_c '%s' %d %d same %s"):format(sample, N, C,
      workload == "unique" and "unique" or ""))
    keep_cpu(name, assert(tonumber(out:match("cpu_us_per_request=([%d.]+)")), out))
    return assert(tonumber(out:match("rate=(%d+)")), out)
  end
end

-- Lua-cURLv3, as a user would write the loop.
local lcurl_ok, lcurl = pcall(require, "lcurl")
local function encode(s)
  return (s:gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end
local function lcurl_rate(workload)
  return function(name)
    collectgarbage()
    local list = items[workload]
    local function url_of(i)
      local v = list[i].values
      if workload == "unique" then
        return ("%s?n=%d&click_id=%s&payout=%s&aff_sub1=%s"):format(base, i, encode(v.click_id),
          encode(tostring(v.payout)), encode(v.aff_sub1))
      end
      return ("%s?click_id=%s&payout=%s&aff_sub1=%s"):format(base, encode(v.click_id),
        encode(tostring(v.payout)), encode(v.aff_sub1))
    end
    local t0, c0 = core.now(), os.clock()
    local m = lcurl.multi()
    local sink = function() end
    local started, done, ok = 0, 0, 0
    for _ = 1, math.min(C, N) do
      started = started + 1
      local e = lcurl.easy()
      e:setopt_url(url_of(started))
      e:setopt_writefunction(sink)
      e:setopt_timeout_ms(10000)
      e:setopt_connecttimeout_ms(5000)
      e:setopt_useragent("postback/0.2.0")
      m:add_handle(e)
    end
    while done < N do
      m:perform()
      while true do
        local e, good = m:info_read(true)
        if type(e) ~= "userdata" then break end
        done = done + 1
        if good and e:getinfo_response_code() == 204 then ok = ok + 1 end
        if started < N then
          started = started + 1
          e:setopt_url(url_of(started))
          m:add_handle(e)
        else
          e:close()
        end
      end
      if done < N then m:wait(1000) end
    end
    m:close()
    local dt = core.now() - t0
    keep_cpu(name, (os.clock() - c0) / N * 1e6)
    assert(ok == N, ("Lua-cURLv3: %d of %d ok"):format(ok, N))
    return N / dt
  end
end

local function wrk_rate()
  local out = sh(("wrk -t2 -c%d -d3s '%s'"):format(C, sample))
  return assert(tonumber(out:match("Requests/sec:%s*([%d.]+)")), out)
end

local urls_file = os.tmpname()
do
  local f = assert(io.open(urls_file, "w"))
  for i = 1, N do
    f:write(("url = \"%s?click_id=c-%06d&payout=1.25\"\noutput = \"/dev/null\"\n"):format(base, i))
  end
  f:close()
end
local function curl_parallel_rate()
  local t0 = core.now()
  sh(("curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max %d -K %s 2>/dev/null"):format(C, urls_file))
  return N / (core.now() - t0)
end

local contenders = {
  { "fire_many, unique URLs", fire_many_rate("unique") },
  { "C multi loop, unique URLs", multi_c_rate("unique") },
  { "fire_many, shared template", fire_many_rate("shared") },
  { "C multi loop, shared template", multi_c_rate("shared") },
  { "dispatcher, shared template", dispatcher_rate },
  { "curl --parallel", curl_parallel_rate },
  { "wrk", wrk_rate },
}
if lcurl_ok then
  table.insert(contenders, 3, { "Lua-cURLv3 loop, unique URLs", lcurl_rate("unique") })
  table.insert(contenders, 6, { "Lua-cURLv3 loop, shared template", lcurl_rate("shared") })
end

local best = {}
for _ = 1, ROUNDS do
  for _, c in ipairs(contenders) do
    local rate = c[2](c[1])
    if not best[c[1]] or rate > best[c[1]] then best[c[1]] = rate end
  end
end

-- poll(0) with 1,000 transfers in flight: a listener that never answers
-- holds them (the kernel completes the connections in its backlog).
local hold = assert(socket.bind("127.0.0.1", 0, 2048))
local _, hold_port = hold:getsockname()
local d = postback.dispatcher { concurrency = 1000, timeout = 60, retries = 0, allow_private = true }
for i = 1, 1000 do d:fire(("http://127.0.0.1:%d/postback?i=%d"):format(hold_port, i)) end
for _ = 1, 50 do d:poll(0) end
local polls, t0 = 500, core.now()
for _ = 1, polls do d:poll(0) end
local poll_us = (core.now() - t0) / polls * 1e6
local in_flight = d:pending()
d:close()
hold:close()

ngx:stop()
os.remove(urls_file)

local function ratio(a, b)
  if not best[a] or not best[b] then return "n/a" end
  return ("%.2f"):format(best[a] / best[b])
end
local function cpu_of(name) return cpu[name] and ("%.1f"):format(cpu[name]) or "-" end

print(("fire benchmark: %d GETs, concurrency %d, best of %d interleaved rounds, loopback nginx answering 204")
  :format(N, C, ROUNDS))
print(("%-34s %12s %14s"):format("contender", "requests/s", "CPU us/request"))
for _, c in ipairs(contenders) do
  print(("%-34s %12.0f %14s"):format(c[1], best[c[1]], cpu_of(c[1])))
end
if not lcurl_ok then
  print("Lua-cURLv3: skipped (its lcurl module cannot be loaded: build Lua-cURLv3 and point LCURL_CPATH at it)")
end
print(("fire_many / C multi loop, unique URLs:      %s   (target >= 0.95)"):format(
  ratio("fire_many, unique URLs", "C multi loop, unique URLs")))
print(("fire_many / C multi loop, shared template:  %s   (target >= 0.95)"):format(
  ratio("fire_many, shared template", "C multi loop, shared template")))
print(("fire_many / Lua-cURLv3, unique URLs:        %s   (target >= 1.10)"):format(
  ratio("fire_many, unique URLs", "Lua-cURLv3 loop, unique URLs")))
print(("fire_many / Lua-cURLv3, shared template:    %s   (target >= 1.10)"):format(
  ratio("fire_many, shared template", "Lua-cURLv3 loop, shared template")))
print(("dispatcher / C multi loop, shared template: %s   (target >= 0.9)"):format(
  ratio("dispatcher, shared template", "C multi loop, shared template")))
print(("fire_many / wrk (HTTP ceiling):             %s   (the C multi loop itself reaches %s of wrk)"):format(
  ratio("fire_many, shared template", "wrk"), ratio("C multi loop, shared template", "wrk")))
print(("dispatcher:poll(0) with %d in flight: %.1f us = %.2f%% of a 16 ms frame (target <= 1%%)"):format(
  in_flight, poll_us, poll_us / 16000 * 100))
