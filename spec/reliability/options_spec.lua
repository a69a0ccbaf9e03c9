-- Every option is checked, in every constructor and call.
--
-- What is expected, following how each function reports its errors:
--   * fire, fire_many, dispatcher, d:fire, c:batch and migrate RAISE
--     "bad argument #n to 'f' (...)" for a bad option (wrong type, a number
--     that is not finite or out of range, a non-integer where an integer is
--     meant, a name that is no option), and the message names the option;
--   * postback.client(opts) RETURNS nil, err (kind "validation") for the
--     same, and err.message names the option;
--   * a misspelt option name is refused with a suggestion: the message holds
--     the name given, "did you mean" and the option meant (timout -> timeout).
--
-- Specifically: timeout = 0 is an error (it used to mean "no limit", so
-- the call could hang), and max_body, max_response, follow and per_host set
-- to math.huge, 1e300 or NaN are refused before they reach a C cast.
--
-- Each case runs in a child process (an unchecked value could crash an
-- instrumented build or hang), against the hostile server's /ok, which
-- answers 204 at once when a bad option slips through.
local child = require "child"
local hostile = require "hostile"

local PRELUDE = [[
local port = ...
local postback = require "postback"
local OK = "http://127.0.0.1:" .. port .. "/ok/options"
local API = "http://127.0.0.1:" .. port .. "/ok"
local function client(extra)
  local o = { network = "opts", api_key = "opts-key", base_url = API, retries = 0 }
  for k, v in pairs(extra) do o[k] = v end
  return postback.client(o)
end
local function dispatcher(o)
  local d, err = postback.dispatcher(o)
  if d then d:close() end
  return d and true, err
end
local ok, v, err = pcall(function()
]]
local POSTLUDE = [[
end)
return { raised = not ok and tostring(v) or nil, returned = ok and v ~= nil, err = ok and err or nil }
]]

-- {how, option, code[, suggestion]}: how is "raise" (with the bad-argument
-- prefix to expect) or "nil, err".
local CASES = {}

local function raise(prefix, option, code, suggestion)
  CASES[#CASES + 1] = { how = "raise", prefix = prefix, option = option, code = code, suggestion = suggestion }
end

local function nil_err(option, code, suggestion)
  CASES[#CASES + 1] = { how = "nil, err", option = option, code = code, suggestion = suggestion }
end

local BAD_NUMBERS = { ["math.huge"] = "math.huge", ["1e300"] = "1e300", NaN = "0/0" }
local BAD_ORDER = { "math.huge", "1e300", "NaN" }

-- timeout: 0, not finite, negative
for _, t in ipairs { "0", "math.huge", "0/0", "-1" } do
  raise("bad argument #3 to 'fire'", "timeout", ("return postback.fire(OK, nil, { timeout = %s, retries = 0 })"):format(t))
  raise("bad argument #2 to 'fire_many'", "timeout", ("return postback.fire_many({ OK }, { timeout = %s, retries = 0 })"):format(t))
  raise("bad argument #1 to 'dispatcher'", "timeout", ("return dispatcher { timeout = %s }"):format(t))
  nil_err("timeout", ("return client { timeout = %s }"):format(t))
end
raise("bad argument #3 to 'fire'", "timeout", "return postback.fire(OK, nil, { timeout = 1e300, retries = 0 })")
nil_err("timeout", "return client { timeout = 1e300 }")

-- sizes, redirects and per-host caps that no C long can hold
for _, name in ipairs(BAD_ORDER) do
  local n = BAD_NUMBERS[name]
  for _, opt in ipairs { "max_body", "follow", "per_host" } do
    if opt ~= "per_host" then
      raise("bad argument #3 to 'fire'", opt, ("return postback.fire(OK, nil, { %s = %s, retries = 0 })"):format(opt, n))
    end
    raise("bad argument #2 to 'fire_many'", opt, ("return postback.fire_many({ OK }, { %s = %s, retries = 0 })"):format(opt, n))
    raise("bad argument #1 to 'dispatcher'", opt, ("return dispatcher { %s = %s }"):format(opt, n))
  end
  nil_err("max_response", ("return client { max_response = %s }"):format(n))
end

-- integers where integers are meant
raise("bad argument #2 to 'fire_many'", "concurrency", "return postback.fire_many({ OK }, { concurrency = 2.5 })")
raise("bad argument #2 to 'fire_many'", "concurrency", "return postback.fire_many({ OK }, { concurrency = math.huge })")
raise("bad argument #2 to 'fire_many'", "per_host", "return postback.fire_many({ OK }, { per_host = 1.5 })")
raise("bad argument #3 to 'fire'", "max_body", "return postback.fire(OK, nil, { max_body = 1000.5, retries = 0 })")
raise("bad argument #3 to 'fire'", "retries", "return postback.fire(OK, nil, { retries = 1.5 })")
raise("bad argument #1 to 'dispatcher'", "delay", "return dispatcher { delay = 0/0 }")
nil_err("retries", "return client { retries = 1.5 }")
nil_err("max_response", "return client { max_response = 1000.5 }")

-- retry schedules: the same check in the client and the worker as in fire
-- (a NaN wait made a call that failed wait forever, a string made it raise)
for _, sched in ipairs { "{ 0/0 }", "{ 'x' }", "{ -5 }", "{}", "{ 1e300 }", "5" } do
  raise("bad argument #3 to 'fire'", "retry_schedule",
    ("return postback.fire(OK, nil, { retry_schedule = %s })"):format(sched))
  nil_err("retry_schedule", ([[
  local c, e = client { retry_schedule = %s }
  if c then c:get(1) end
  return c, e]]):format(sched))
  raise("bad argument #1 to 'worker'", "retry_schedule",
    ("return postback.worker { redis = 'redis://127.0.0.1:1/0', retry_schedule = %s }"):format(sched))
end

-- made-up and misspelt names
raise("bad argument #3 to 'fire'", "timout", "return postback.fire(OK, nil, { timout = 1 })", "timeout")
raise("bad argument #3 to 'fire'", "frobnicate", "return postback.fire(OK, nil, { frobnicate = true })")
raise("bad argument #2 to 'fire_many'", "concurency", "return postback.fire_many({ OK }, { concurency = 4 })", "concurrency")
raise("bad argument #2 to 'fire_many'", "on_reslt", "return postback.fire_many({ OK }, { on_reslt = print })", "on_result")
raise("bad argument #1 to 'dispatcher'", "retires", "return dispatcher { retires = 1 }", "retries")
raise("bad argument #3 to 'fire'", "dealy", [[
  local d = postback.dispatcher {}
  local ok2, id, e = pcall(d.fire, d, OK, nil, { dealy = 1 })
  d:close()
  if not ok2 then error(id, 0) end
  return id, e]], "delay")
raise("bad argument #2 to 'batch'", "concurency", [[
  local c = assert(client {})
  return c:batch({ { "get", 1 } }, { concurency = 2 })]], "concurrency")
raise("bad argument #1 to 'migrate'", "jornal", [[
  local c = assert(client {})
  return postback.migrate { client = c, source = function() return nil end, jornal = "x.journal",
    transform = function() return nil end }]], "journal")
nil_err("retires", "return client { retires = 1 }", "retries")
nil_err("base_ulr", "return client { base_ulr = API }", "base_url")

local function label(case)
  local code = case.code:gsub("%s+", " "):gsub("^ ", "")
  if #code > 90 then code = code:sub(1, 87) .. "..." end
  return ("%s: %s"):format(case.how == "raise" and "raises" or "nil, err", code)
end

describe("reliability: options are checked", function()
  local server
  local results = {}

  setup(function()
    server = hostile.start()
    local runs = {}
    for i, case in ipairs(CASES) do
      runs[i] = { PRELUDE .. case.code .. "\n" .. POSTLUDE, { args = { server.port }, limit = 10 } }
    end
    results = child.run_all(runs, 8)
  end)

  teardown(function()
    if server then server:stop() end
  end)

  for i, case in ipairs(CASES) do
    it(label(case), function()
      local r = results[i]
      assert(not r.timed_out, "the call never returned (killed after 10 s)")
      assert(r.raised == nil, "the child failed: " .. tostring(r.raised))
      local v = r.value
      local text
      if case.how == "raise" then
        assert(v.raised, ("the option was accepted (the call %s)"):format(
          v.returned and "returned a value" or ("returned nil, " .. tostring(v.err and v.err.text))))
        text = v.raised
        assert(text:find(case.prefix, 1, true), ("expected %q, got: %s"):format(case.prefix, text))
      else
        assert(not v.raised, "raised instead of returning nil, err: " .. tostring(v.raised))
        assert(not v.returned, "the option was accepted")
        assert(type(v.err) == "table", "no error table")
        assert(v.err.kind == "validation", "err.kind is " .. tostring(v.err.kind))
        text = tostring(v.err.message)
      end
      assert(text:find(case.option, 1, true), ("the message does not name %s: %s"):format(case.option, text))
      if case.suggestion then
        assert(text:lower():find("did you mean", 1, true) and text:find(case.suggestion, 1, true),
          ("no \"did you mean %s\" in: %s"):format(case.suggestion, text))
      end
    end)
  end
end)
