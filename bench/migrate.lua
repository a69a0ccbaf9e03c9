-- Migration throughput: 10,000 updates through postback.migrate against the
-- local mock with 5 ms of simulated API latency (a remote API is never 0 ms
-- away), at concurrency 16 and at concurrency 1, measured in one run.
-- Target: concurrency 16 >= 5x concurrency 1.
--
--   make bench   (or: lua5.4 bench/migrate.lua [N] [LATENCY_MS])
package.path = "spec/support/?.lua;" .. package.path
local postback = require "postback"
local core = require "postback.core"
local mockproc = require "mockproc"

local N = tonumber(arg[1]) or 10000
local LATENCY = tonumber(arg[2]) or 5
local mock = mockproc.start { latency = LATENCY }
local c = assert(postback.client(mock:client_opts()))

local function rate(concurrency, n)
  mock:reset()
  mock:seed { count = n, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
  local t0 = core.now()
  local report = assert(postback.migrate { client = c, concurrency = concurrency,
    query = { limit = 1000 }, transform = postback.transforms.replace_host("old.example", "new.example") })
  assert(report.changed == n, ("changed %d of %d"):format(report.changed, n))
  return n / (core.now() - t0)
end

-- concurrency 1 is slow by design: measure it on a tenth of the records
local r16 = rate(16, N)
local r1 = rate(1, math.max(100, math.floor(N / 10)))
c:close()
mock:stop()
print(("migrate benchmark: %d updates, mock API latency %d ms"):format(N, LATENCY))
print(("  concurrency 16: %8.0f updates/s"):format(r16))
print(("  concurrency 1:  %8.0f updates/s (on %d updates)"):format(r1, math.max(100, math.floor(N / 10))))
print(("  ratio: %.1fx  (target >= 5x)"):format(r16 / r1))
