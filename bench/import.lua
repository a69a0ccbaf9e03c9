-- Import throughput: `postback import FILE --concurrency 8` (the command
-- line, as a process) against the sequential way (one c:update after the
-- other, what import did before it ran on client:batch), both against the
-- local mock with 20 ms of simulated API latency, in one run.
-- Target: import --concurrency 8 >= 5x sequential.
--
--   make bench   (or: lua5.4 bench/import.lua [N] [LATENCY_MS] [CONCURRENCY])
package.path = "spec/support/?.lua;" .. package.path
local postback = require "postback"
local core = require "postback.core"
local mockproc = require "mockproc"

local N = tonumber(arg[1]) or 1000
local LATENCY = tonumber(arg[2]) or 20
local CONCURRENCY = tonumber(arg[3]) or 8
local lua = arg[-1] or "lua5.4"
local mock = mockproc.start { latency = LATENCY }
local c = assert(postback.client(mock:client_opts()))
local file = os.tmpname()

-- n postbacks on old.example, and a JSONL file that moves them all to
-- new.example (what `postback export` and an edit give)
local function prepare(n)
  mock:reset()
  mock:seed { count = n, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
  local f = assert(io.open(file, "w"))
  local rows = {}
  for pb in c:each { limit = 1000 } do
    pb.code = pb.code:gsub("old%.example", "new.example")
    f:write(assert(require("postback.json").encode(pb)), "\n")
    rows[#rows + 1] = pb
  end
  f:close()
  assert(#rows == n, ("seeded %d, listed %d"):format(n, #rows))
  return rows
end

local function check_writes(n)
  local writes, total = mock:stats().writes, 0
  for _, w in pairs(writes) do
    assert(w == 1, "a postback was written twice")
    total = total + w
  end
  assert(total == n, ("%d writes for %d postbacks"):format(total, n))
end

-- The command line, as a user runs it.
local function cli_rate(n)
  prepare(n)
  local cmd = ("env OFFERSLOOK_NETWORK=%s OFFERSLOOK_API_KEY=%s OFFERSLOOK_BASE_URL=%s %s bin/postback import %s --concurrency %d")
    :format(mock.network, mock.api_key, mock.url, lua, file, CONCURRENCY)
  local t0 = core.now()
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  local seconds = core.now() - t0
  assert(out:find('"updated":' .. n, 1, true), "import did not update every postback: " .. out)
  check_writes(n)
  return n / seconds
end

-- The sequential way: one update after the other.
local function sequential_rate(n)
  local rows = prepare(n)
  local t0 = core.now()
  for _, pb in ipairs(rows) do assert(c:update(pb.id, { code = pb.code })) end
  local seconds = core.now() - t0
  check_writes(n)
  return n / seconds
end

-- sequential is slow by design: measure it on a fifth of the records
local n_seq = math.max(50, math.floor(N / 5))
local r_cli = cli_rate(N)
local r_seq = sequential_rate(n_seq)
c:close()
mock:stop()
os.remove(file)
print(("import benchmark: %d updates, mock API latency %d ms"):format(N, LATENCY))
print(("  postback import --concurrency %d: %8.0f updates/s"):format(CONCURRENCY, r_cli))
print(("  sequential c:update:            %8.0f updates/s (on %d updates)"):format(r_seq, n_seq))
print(("  ratio: %.1fx  (target >= 5x)"):format(r_cli / r_seq))
