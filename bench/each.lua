-- Memory of client:each: the peak growth of the Lua heap while streaming
-- 100,000 postbacks, next to the same over 10,000 (flat in N is the goal;
-- target <= 16 MiB). Pages of 1,000 rows from the local mock.
--
--   make bench   (or: lua5.4 bench/each.lua)
package.path = "spec/support/?.lua;" .. package.path
local postback = require "postback"
local mockproc = require "mockproc"

local mock = mockproc.start {}
local c = assert(postback.client(mock:client_opts()))

local function peak_growth(n)
  mock:reset()
  mock:seed { count = n }
  collectgarbage()
  collectgarbage()
  local base, peak, seen = collectgarbage("count"), 0, 0
  local t0 = os.clock()
  for _ in c:each { limit = 1000 } do
    seen = seen + 1
    if seen % 250 == 0 then
      local now = collectgarbage("count") - base
      if now > peak then peak = now end
    end
  end
  assert(seen == n, ("saw %d of %d"):format(seen, n))
  return peak / 1024, os.clock() - t0
end

local small, t_small = peak_growth(10000)
local large, t_large = peak_growth(100000)
c:close()
mock:stop()
print("each benchmark: peak Lua heap growth while streaming, pages of 1,000")
print(("  10,000 rows:  %6.2f MiB  (%.2f s CPU)"):format(small, t_small))
print(("  100,000 rows: %6.2f MiB  (%.2f s CPU)"):format(large, t_large))
print(("  100k / 10k growth: %.2f  (flat = 1.0; target: <= 16 MiB)"):format(large / small))
