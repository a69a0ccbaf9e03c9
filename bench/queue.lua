-- Queue benchmark: the shared Redis queue against the local spool
-- dispatcher, in one run, delivering to a loopback nginx that answers 204.
--   * enqueue rate: q:push (one XADD, answered by Redis) with Redis syncing
--     its append-only file on every write and once a second, vs d:fire on a
--     dispatcher with a spool (an append, synced once per poll);
--   * delivery rate of N waiting postbacks, and end to end (from the first
--     enqueue to the last 204): one in-process worker vs one spool
--     dispatcher at the same concurrency, and two `postback worker`
--     processes.
--
--   make bench   (or: lua5.4 bench/queue.lua [N] [CONCURRENCY])
package.path = "spec/support/?.lua;" .. package.path
local postback = require "postback"
local core = require "postback.core"
local socket = require "socket"
local redisproc = require "redisproc"
local workerproc = require "workerproc"

local N = tonumber(arg[1]) or 20000
local C = tonumber(arg[2]) or 64
local N_SYNC = math.min(N, 2000) -- every push waits for a disk sync: fewer

if not redisproc.available() then
  print("redis-server is not installed: queue benchmark skipped")
  return
end

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)
local log = tmp .. "/rx.log"
local rx = workerproc.receiver(log)
local code = rx.url .. "/pb?c={click_id}&payout={payout}&sub={aff_sub1}"
local function values(i) return { click_id = ("c-%07d"):format(i), payout = 1.25, aff_sub1 = "spring sale" } end

local function received()
  return (workerproc.count_lines(log))
end

local function truncate()
  local f = assert(io.open(log, "w"))
  f:close()
end

local results = {}
local function report(name, n, seconds)
  results[name] = n / seconds
  print(("%-52s %8.0f/s  (%d in %.2f s)"):format(name, n / seconds, n, seconds))
end

-- 1. the spool dispatcher: enqueue, then deliver
do
  truncate()
  local spool = tmp .. "/bench.spool"
  local d = assert(postback.dispatcher { concurrency = C, retries = 0, spool = spool, allow_private = true })
  local t0 = core.now()
  for i = 1, N do assert(d:fire(code, values(i))) end
  report("spool dispatcher: d:fire (enqueue)", N, core.now() - t0)
  local t1 = core.now()
  assert(d:wait(120))
  report("spool dispatcher: delivery", N, core.now() - t1)
  report("spool dispatcher: end to end", N, core.now() - t0)
  d:close()
  assert(received() == N, "the dispatcher delivered " .. received())
end

-- 2. the queue, Redis syncing every write: the durable setting
do
  local r = redisproc.start { fsync = "always" }
  local q = assert(postback.queue { redis = r.url, stream = "bench" })
  local t0 = core.now()
  for i = 1, N_SYNC do assert(q:push(code, values(i))) end
  report("queue: q:push, appendfsync always", N_SYNC, core.now() - t0)
  q:close()
  r:stop()
end

-- 3. the queue, Redis syncing once a second; delivery by one in-process
-- worker, then by two worker processes
local r = redisproc.start { fsync = "everysec" }
do
  truncate()
  local q = assert(postback.queue { redis = r.url, stream = "bench" })
  local t0 = core.now()
  for i = 1, N do assert(q:push(code, values(i))) end
  report("queue: q:push, appendfsync everysec", N, core.now() - t0)
  local t1 = core.now()
  local w = assert(postback.worker { redis = r.url, stream = "bench", concurrency = C, allow_private = true })
  while w:stats().delivered < N do w:poll(0.1) end
  report("queue: delivery, 1 worker (in process)", N, core.now() - t1)
  report("queue: end to end, 1 worker (in process)", N, core.now() - t0)
  w:close()
  q:close()
  assert(received() == N, "the worker delivered " .. received())
end
do
  truncate()
  local q = assert(postback.queue { redis = r.url, stream = "bench2" })
  local t0 = core.now()
  for i = 1, N do assert(q:push(code, values(i))) end
  local t1 = core.now()
  local pids = {}
  for i = 1, 2 do
    pids[i] = workerproc.spawn({ "--redis", r.url, "--stream", "bench2", "--concurrency", tostring(C),
                                 "--allow-private", "--quiet" }, nil, arg[-1])
  end
  local deadline = core.now() + 300
  while received() < N and core.now() < deadline do socket.sleep(0.02) end
  report("queue: delivery, 2 worker processes", received(), core.now() - t1)
  report("queue: end to end, 2 worker processes", received(), core.now() - t0)
  for _, pid in ipairs(pids) do workerproc.kill(pid) end
  q:close()
  assert(received() == N, "the workers delivered " .. received())
end
r:stop()
rx:stop()
os.execute("rm -rf " .. tmp)

print(("\nq:push (fsync always) / d:fire with spool:      %.3f"):format(
  results["queue: q:push, appendfsync always"] / results["spool dispatcher: d:fire (enqueue)"]))
print(("q:push (fsync everysec) / d:fire with spool:    %.3f"):format(
  results["queue: q:push, appendfsync everysec"] / results["spool dispatcher: d:fire (enqueue)"]))
print(("delivery, 1 worker / spool dispatcher:          %.2f"):format(
  results["queue: delivery, 1 worker (in process)"] / results["spool dispatcher: delivery"]))
print(("end to end, 1 worker / spool dispatcher:        %.2f"):format(
  results["queue: end to end, 1 worker (in process)"] / results["spool dispatcher: end to end"]))
print(("end to end, 2 worker processes / spool dispatcher: %.2f"):format(
  results["queue: end to end, 2 worker processes"] / results["spool dispatcher: end to end"]))
