-- Spool soak: N postbacks through one dispatcher with a spool, against a
-- loopback nginx that answers 204, never more than 2,000 owed at once. For
-- each N it reports the peak size of the spool file, the peak RSS of the
-- firing process, and how long a restart takes to open the spool as a
-- crash left it (a copy taken halfway, 2,000 owed) and the RSS of that
-- process. All of them should stay flat in N: the spool is compacted while
-- the dispatcher runs, so its size follows what is owed, not what was sent.
--
--   lua5.4 bench/spool_soak.lua [N ...]     (default 10000 100000 1000000)
--
-- Each N runs in a process of its own (peak RSS is per process), and so does
-- each reopen. The spool lives in a temporary directory on the disk.
package.path = "spec/support/?.lua;" .. package.path
local core = require "postback.core"

local OWED = 2000

local function vm_hwm_kib()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmHWM:%s*(%d+)")) or 0
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

local function copy(from, to)
  local f = assert(io.open(from, "rb"))
  local s = f:read("*a")
  f:close()
  f = assert(io.open(to, "wb"))
  f:write(s)
  f:close()
end

-- Child: fire n postbacks through one dispatcher; print key=value lines.
local function run_one(n, url, dir)
  local postback = require "postback"
  local path = dir .. "/soak.spool"
  local d = assert(postback.dispatcher { allow_private = true, spool = path, concurrency = 64 })
  local code = url .. "/pb?click_id={click_id}&payout=1.25&aff_sub1=spring%20sale"
  local fired, polls, peak_file, snap = 0, 0, 0, false
  local t0 = core.now()
  while fired < n or d:pending() > 0 do
    while d:pending() < OWED and fired < n do
      fired = fired + 1
      assert(d:fire(code, { click_id = ("c-%08d"):format(fired) }))
    end
    d:poll(0.01)
    polls = polls + 1
    if polls % 16 == 0 then
      local size = file_size(path)
      if size > peak_file then peak_file = size end
    end
    if not snap and fired >= n / 2 and d:pending() >= OWED - 100 then
      -- what a crash right now would leave for the next start
      copy(path, dir .. "/crash.spool")
      snap = true
    end
  end
  local dt = core.now() - t0
  local st = d:stats()
  d:close()
  assert(st.delivered == n and st.failed == 0, ("delivered %d of %d"):format(st.delivered, n))
  print(("seconds=%.3f rate=%.0f peak_bytes=%d peak_file=%d compactions=%d rss_kib=%d end_bytes=%d"):format(
    dt, n / dt, st.spool.peak_bytes, math.max(peak_file, st.spool.peak_bytes), st.spool.compactions,
    vm_hwm_kib(), file_size(path)))
end

-- Child: open a spool as a crash left it; print the time and the RSS.
local function reopen_one(path)
  local spool = require "postback.spool"
  local base = vm_hwm_kib()
  local t0 = core.now()
  local sp = assert(spool.open(path, { on_error = function() end }))
  local owed = 0
  for _ in sp:owed() do owed = owed + 1 end
  local dt = core.now() - t0
  local bytes = sp:stats().bytes
  sp:close()
  print(("reopen_seconds=%.4f owed=%d rss_kib=%d growth_kib=%d bytes=%d"):format(dt, owed, vm_hwm_kib(),
    vm_hwm_kib() - base, bytes))
end

if arg[1] == "--run" then
  run_one(tonumber(arg[2]), arg[3], arg[4])
  return
elseif arg[1] == "--reopen" then
  reopen_one(arg[2])
  return
end

-- Parent.
local nginxproc = require "nginxproc"
local lua = arg[-1] or "lua5.4"
local sizes = {}
for _, a in ipairs(arg) do sizes[#sizes + 1] = assert(tonumber(a), "N expected: " .. a) end
if #sizes == 0 then sizes = { 10000, 100000, 1000000 } end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  local ok = p:close()
  return out, ok
end

local function kv(line)
  local t = {}
  for k, v in line:gmatch("([%w_]+)=([%d.]+)") do t[k] = tonumber(v) end
  return t
end

local ngx = nginxproc.start { locations = "location / { return 204; }" }
local rows = {}
for _, n in ipairs(sizes) do
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. dir))
  io.stderr:write(("spool soak: %d postbacks ...\n"):format(n))
  local out = sh(("%s bench/spool_soak.lua --run %d %s %s 2>&1"):format(lua, n, ngx.url, dir))
  local r = kv(out)
  if not r.seconds then
    ngx:stop()
    os.execute("rm -rf " .. dir)
    error("soak run failed:\n" .. out)
  end
  local ro = kv(sh(("%s bench/spool_soak.lua --reopen %s/crash.spool 2>&1"):format(lua, dir)))
  os.execute("rm -rf " .. dir)
  rows[#rows + 1] = { n = n, r = r, ro = ro }
end
ngx:stop()

local function mib(b) return b / 1048576 end
print(("spool soak: N postbacks through one dispatcher (nginx 204, at most %d owed, concurrency 64)"):format(OWED))
print(("%10s %8s %8s %12s %12s %10s %14s %12s %12s"):format("N", "seconds", "rate/s", "peak spool",
  "compactions", "peak RSS", "reopen (owed)", "reopen RSS", "reopen file"))
for _, row in ipairs(rows) do
  local r, ro = row.r, row.ro
  print(("%10d %8.1f %8.0f %9.2f MiB %12d %6.1f MiB %8.1f ms (%d) %8.1f MiB %8.2f MiB"):format(row.n, r.seconds,
    r.rate, mib(r.peak_file), r.compactions, r.rss_kib / 1024, (ro.reopen_seconds or 0) * 1000, ro.owed or 0,
    (ro.rss_kib or 0) / 1024, mib(ro.bytes or 0)))
end
if #rows >= 2 then
  local a, b = rows[1], rows[#rows]
  print(("growth %d / %d: peak spool %.2f, peak RSS %.2f, reopen time %.2f, reopen RSS %.2f (flat = 1.0)"):format(
    b.n, a.n, b.r.peak_file / a.r.peak_file, b.r.rss_kib / a.r.rss_kib,
    (b.ro.reopen_seconds or 0) / math.max(a.ro.reopen_seconds or 0, 1e-6), (b.ro.rss_kib or 0) / math.max(a.ro.rss_kib or 0, 1)))
end
