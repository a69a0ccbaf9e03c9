-- bench/render.lua - how fast postback renders a realistic postback, against
-- an idiomatic pure-Lua renderer and against core/ in a pure C loop.
--
--   make bench        (builds build/5.4/ and build/bench/render_c, runs this)
--
-- Run from the repository root with LUA_PATH/LUA_CPATH pointing at build/5.4/
-- (as `make bench` sets them). Prints renders/s for each contender and the
-- ratios against the targets; this is a report, not a timed test: it exits 0
-- whatever the numbers (non-zero only if the outputs disagree or a step fails).
--
-- Timing: CPU time (os.clock); each contender runs for SECONDS (default 1) per
-- repeat, REPEATS rounds (default 5) interleaving the contenders; the best
-- round of each counts.
--   lua5.4 bench/render.lua [SECONDS [REPEATS]]

local postback = require "postback"

local SECONDS = tonumber(arg and arg[1]) or 1.0
local REPEATS = tonumber(arg and arg[2]) or 5
local C_DRIVER = "build/bench/render_c"

-- ~200 bytes, 8 macros: the shape of a real Offerslook postback.
local code = "https://track.example-network.com/postback?click_id={click_id}&payout={payout}"
  .. "&currency={currency}&offer={offer_id}&aff={aff_id}&sub1={aff_sub1}&sub2={aff_sub2}"
  .. "&ip={conversion_ip}&src=offerslook"

-- The same values bench/render_c.c uses.
local values = {
  click_id = "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b9c", -- 36 chars, hyphens
  payout = 1.25,                                  -- a float
  currency = "USD",
  offer_id = 10482,                               -- integers
  aff_id = 377,
  aff_sub1 = "spring sale – ünïcode ✓",           -- spaces and UTF-8: needs encoding
  aff_sub2 = "banner_300x250",
  conversion_ip = "203.0.113.45",
}

---------------------------------------------------------------------------
-- The pure-Lua peer: what a careful script would write without postback.

local DOCUMENTED = {}
for _, name in ipairs(postback.MACROS) do DOCUMENTED[name] = true end

local function hex(c)
  return string.format("%%%02X", string.byte(c))
end

local function url_encode(s)
  return (s:gsub("[^%w%-%._~]", hex))
end

local function format_value(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then
    if math.type(v) == "integer" then return string.format("%d", v) end
    return string.format("%.14g", v)
  end
  if t == "boolean" then return tostring(v) end
  error("bad value type " .. t)
end

local function lua_render(tpl, vals)
  return (tpl:gsub("{([%w_]+)}", function(name)
    local v = vals[name]
    if v == nil then
      if DOCUMENTED[name] then return "" end
      return nil -- undocumented: stays literal
    end
    return url_encode(format_value(v))
  end))
end

---------------------------------------------------------------------------
-- Timing

local clock = os.clock

-- Renders/s of fn over one run of about SECONDS.
local function measure_once(fn)
  local n, start = 0, clock()
  local limit = start + SECONDS
  local now
  repeat
    for _ = 1, 200 do fn() end
    n = n + 200
    now = clock()
  until now >= limit
  return n / (now - start)
end

local function run_c(args)
  local p = io.popen(C_DRIVER .. " " .. args .. " 2>&1")
  if not p then return nil, "cannot run " .. C_DRIVER end
  local out = p:read("a")
  local ok, _, status = p:close()
  if not ok then
    return nil, string.format("%s %s failed (%s): %s", C_DRIVER, args, tostring(status), out)
  end
  return out
end

local function fail(msg)
  io.stderr:write("bench/render.lua: ", msg, "\n")
  os.exit(1)
end

---------------------------------------------------------------------------
-- The outputs must agree before anything is timed.

local t = assert(postback.template(code))
local want = assert(t:render(values))
local got_lua = lua_render(code, values)
if got_lua ~= want then
  fail("pure-Lua output differs:\n  postback " .. want .. "\n  pure-Lua " .. got_lua)
end
local got_once = assert(postback.render(code, values))
if got_once ~= want then fail("postback.render differs from t:render") end
local c_out, err = run_c("--print")
if not c_out then fail(err) end
c_out = c_out:gsub("\n$", "")
if c_out ~= want then
  fail("pure-C output differs:\n  postback " .. want .. "\n  pure-C   " .. c_out)
end

---------------------------------------------------------------------------
-- Measure, in one run.

-- Rounds interleave the contenders, so a busy moment of a shared machine
-- hits them alike; the best round of each counts.
local rate_pb, rate_once, rate_lua, rate_c = 0, 0, 0, 0
for _ = 1, REPEATS do
  rate_pb = math.max(rate_pb, measure_once(function() return t:render(values) end))
  rate_once = math.max(rate_once, measure_once(function() return postback.render(code, values) end))
  rate_lua = math.max(rate_lua, measure_once(function() return lua_render(code, values) end))
  local c_line
  c_line, err = run_c(string.format("%g %d", SECONDS, 1))
  if not c_line then fail(err) end
  local rate = tonumber(c_line:match("renders_per_sec=([%d%.]+)"))
  if not rate then fail("unexpected output from " .. C_DRIVER .. ": " .. c_line) end
  rate_c = math.max(rate_c, rate)
end

local function fmt_rate(r)
  return string.format("%12.0f", r)
end

print(string.format("render benchmark (%s, %d-byte template, %d macros, %d-byte output)",
  _VERSION, #code, #t:macros(), #want))
print(string.format("best of %d interleaved rounds x %gs CPU each (os.clock)", REPEATS, SECONDS))
print("")
print(string.format("  %-36s %12s", "contender", "renders/s"))
print(string.format("  %-36s %s", "postback t:render(values)", fmt_rate(rate_pb)))
print(string.format("  %-36s %s", "pure Lua (gsub + gsub encoder)", fmt_rate(rate_lua)))
print(string.format("  %-36s %s", "pure C (core/, reused pb_buf)", fmt_rate(rate_c)))
print(string.format("  %-36s %s", "postback.render(code, values) 1-shot", fmt_rate(rate_once)))
print("")

local function ratio_line(label, r, target)
  print(string.format("  %-36s %8.2fx   target >= %gx  %s", label, r, target,
    r >= target and "ok" or "BELOW TARGET"))
end
ratio_line("postback / pure-Lua", rate_pb / rate_lua, 8)
ratio_line("postback / pure-C", rate_pb / rate_c, 0.8)
ratio_line("1-shot / t:render", rate_once / rate_pb, 0.6)
