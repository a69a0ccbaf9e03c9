-- Timeouts always hold: every call, with a 1 s timeout and no retries,
-- against every hostile server mode, returns (never raises, never hangs)
-- within the timeout + 0.5 s with a typed error ("timeout" or "transport").
-- A receiver that closes the connection in the middle of its headers has
-- not taken the postback: that is a transport error, never a delivery.
--
-- Each case runs in its own child process under a hard limit, so a call
-- that never returns fails its test instead of hanging the suite; the cases
-- run several at a time.
local child = require "child"
local hostile = require "hostile"
local testenv = require "testenv"

local TIMEOUT = 1
local BOUND = TIMEOUT + (testenv.slow and 5 or 0.5)
local LIMIT = 10 -- seconds before a child is killed

local MODES = { "silent", "drip", "chunked-forever", "huge-body", "close-mid-headers", "invalid", "huge-header" }

-- Each call returns value, err: a value means the call succeeded (which,
-- against these servers, is wrong). The servers are on loopback, so the
-- firing calls allow private destinations.
local CALLS = {
  get = "return c:get(1)",
  list = "return c:list { limit = 5 }",
  create = [[return c:create { offer_id = 1, affiliate_id = 7, type = 2, code = "https://t.example/pb?c={click_id}" }]],
  update = [[return c:update(1, { code = "https://t.example/pb?c={click_id}&u=1" })]],
  set_status = [[return c:set_status(1, "approved")]],
  delete = "return c:delete(1)",
  offer = "return c:offer(2)",
  each = [[
    local ok, e = pcall(function() for _ in c:each { limit = 5 } do end end)
    if ok then return true end
    return nil, e]],
  batch = [[
    local r = c:batch { { "get", 1 } }[1]
    if r.ok then return r end
    return nil, r.error]],
  fire = [[return postback.fire(pb_url, { click_id = "abc" }, { allow_private = true, timeout = TIMEOUT, retries = 0 })]],
  fire_many = [[
    local r = postback.fire_many({ { url = pb_url, values = { click_id = "abc" } } },
      { allow_private = true, timeout = TIMEOUT, retries = 0 })[1]
    if r.ok then return r end
    return nil, r.error]],
  dispatcher = [[
    local got
    local d = postback.dispatcher { allow_private = true, timeout = TIMEOUT, retries = 0, on_result = function(r) got = r end }
    local id, ferr = d:fire(pb_url, { click_id = "abc" })
    if not id then return nil, ferr end
    local done, werr = d:wait(8)
    d:close()
    if not got then return nil, werr or "no on_result" end
    if got.ok then return got end
    return nil, got.error]],
}
local CALL_ORDER = { "get", "list", "create", "update", "set_status", "delete", "offer", "each", "batch",
                     "fire", "fire_many", "dispatcher" }

local function case_code(call)
  return ([[
local port, mode = ...
local postback = require "postback"
local core = require "postback.core"
local TIMEOUT = %d
local base = "http://127.0.0.1:" .. port .. "/" .. mode
local pb_url = base .. "/pb?c={click_id}"
local c = assert(postback.client { network = "hostile", api_key = "hostile-key", base_url = base,
  timeout = TIMEOUT, retries = 0, backoff_base = 0.01, backoff_max = 0.01 })
local function call()
%s
end
local t0 = core.now()
local value, err = call()
return { elapsed = core.now() - t0, succeeded = value ~= nil, err = err }
]]):format(TIMEOUT, CALLS[call])
end

describe("reliability: every call x every hostile server, with a 1 s timeout", function()
  local server
  local results = {} -- call .. " " .. mode -> child result

  setup(function()
    server = hostile.start()
    local cases, keys = {}, {}
    for _, call in ipairs(CALL_ORDER) do
      for _, mode in ipairs(MODES) do
        cases[#cases + 1] = { case_code(call), { args = { server.port, mode }, limit = LIMIT } }
        keys[#keys + 1] = call .. " " .. mode
      end
    end
    for i, r in ipairs(child.run_all(cases, testenv.slow and 4 or 14)) do results[keys[i]] = r end
  end)

  teardown(function()
    if server then server:stop() end
  end)

  for _, call in ipairs(CALL_ORDER) do
    for _, mode in ipairs(MODES) do
      it(("%s against /%s returns a typed error within %.1f s"):format(call, mode, BOUND), function()
        local r = results[call .. " " .. mode]
        assert(r, "the case did not run")
        assert(not r.timed_out, "the call never returned (killed after " .. LIMIT .. " s)")
        assert(r.raised == nil, "the call raised: " .. tostring(r.raised))
        local v = r.value
        assert(not v.succeeded, "the call succeeded against /" .. mode .. ": " .. child.describe(r))
        assert(type(v.err) == "table", "not an error table: " .. child.describe(r))
        assert(v.err.kind == "timeout" or v.err.kind == "transport",
          ("err.kind is %s (%s), expected timeout or transport"):format(tostring(v.err.kind), tostring(v.err.text)))
        assert(v.elapsed <= BOUND, ("returned after %.2f s, more than %.1f s"):format(v.elapsed, BOUND))
      end)
    end
  end
end)
