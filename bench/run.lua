-- `make bench`: runs every benchmark of the project, prints one table of
-- ratios against the peers measured in the same runs, and writes it (with
-- each benchmark's full output and the machine it ran on) to bench/RESULTS.md.
local lua = arg[-1] or "lua5.4"

local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1"))
  local out = p:read("*a")
  p:close()
  return out
end

local function first_line(cmd)
  return (sh(cmd):match("[^\n]*") or ""):gsub("%s+$", "")
end

local benches = {
  { name = "render", script = "bench/render.lua" },
  { name = "fire", script = "bench/fire.lua" },
  { name = "migrate", script = "bench/migrate.lua" },
  { name = "import", script = "bench/import.lua" },
  { name = "each", script = "bench/each.lua" },
  { name = "isolation", script = "bench/isolation.lua" },
  { name = "spool", script = "bench/spool_soak.lua 10000 100000" },
  { name = "queue", script = "bench/queue.lua" },
  { name = "gateway", script = "bench/gateway.lua" },
}

local outputs = {}
for _, b in ipairs(benches) do
  io.stderr:write("running ", b.script, " ...\n")
  outputs[b.name] = sh(lua .. " " .. b.script)
  io.write(outputs[b.name], "\n")
end

local function grab(name, pattern)
  return outputs[name]:match(pattern) or "?"
end

local rows = {
  { "rendering: t:render vs idiomatic pure Lua (gsub)", grab("render", "postback / pure%-Lua%s+([%d.]+x)"), ">= 8x" },
  { "rendering: t:render vs the same render in pure C", grab("render", "postback / pure%-C%s+([%d.]+x)"), ">= 0.8x" },
  { "rendering: one-shot postback.render vs t:render", grab("render", "1%-shot / t:render%s+([%d.]+x)"), ">= 0.6x" },
  { "firing: fire_many vs libcurl's C loop, unique URLs", grab("fire", "fire_many / C multi loop, unique URLs:%s+([%d.]+)"), ">= 0.95" },
  { "firing: fire_many vs libcurl's C loop, shared template", grab("fire", "fire_many / C multi loop, shared template:%s+([%d.]+)"), ">= 0.95" },
  { "firing: fire_many vs a Lua-cURLv3 loop, unique URLs", grab("fire", "fire_many / Lua%-cURLv3, unique URLs:%s+([%d.a-z/]+)"), ">= 1.10" },
  { "firing: fire_many vs a Lua-cURLv3 loop, shared template", grab("fire", "fire_many / Lua%-cURLv3, shared template:%s+([%d.a-z/]+)"), ">= 1.10" },
  { "firing: dispatcher vs libcurl's C loop", grab("fire", "dispatcher / C multi loop, shared template:%s+([%d.]+)"), ">= 0.9" },
  { "firing: CPU per request, fire_many / C loop (unique URLs)",
    grab("fire", "\nfire_many, unique URLs%s+%d+%s+([%d.]+)") .. " / " .. grab("fire", "\nC multi loop, unique URLs%s+%d+%s+([%d.]+)") .. " us", "-" },
  { "firing: fire_many vs wrk (HTTP ceiling)", grab("fire", "fire_many / wrk %(HTTP ceiling%):%s+([%d.]+)"), "-" },
  { "firing: libcurl's C loop vs wrk", grab("fire", "C multi loop itself reaches ([%d.]+) of wrk"), "-" },
  { "dispatcher:poll(0), 1,000 in flight, share of 16 ms", grab("fire", "= ([%d.]+%%) of a 16 ms frame"), "<= 1%" },
  { "migrate: concurrency 16 vs 1 (5 ms API latency)", grab("migrate", "ratio: ([%d.]+x)"), ">= 5x" },
  { "import: --concurrency 8 vs sequential (20 ms API latency)", grab("import", "ratio: ([%d.]+x)"), ">= 5x" },
  { "each: heap growth over 100,000 rows", grab("each", "100,000 rows:%s+([%d.]+ MiB)"), "<= 16 MiB" },
  { "each: growth 100k rows / 10k rows", grab("each", "100k / 10k growth: ([%d.]+)"), "flat (1.0)" },
  { "isolation: 16 healthy behind 48 silent slots, fire_many", grab("isolation", "fire_many isolation: ([^\n]+)"),
    "16/16, <= 100 ms" },
  { "isolation: 16 healthy behind 48 silent slots, dispatcher", grab("isolation", "dispatcher isolation: ([^\n]+)"),
    "16/16, <= 100 ms" },
  { "spool soak: peak spool file, 100,000 through one dispatcher", grab("spool", "\n%s+100000%s+[%d.]+%s+%d+%s+([%d.]+ MiB)"), "<= 4 MiB" },
  { "spool soak: peak spool 100k / 10k", grab("spool", "peak spool ([%d.]+),"), "flat (1.0)" },
  { "spool soak: peak RSS 100k / 10k", grab("spool", "peak RSS ([%d.]+),"), "flat (1.0)" },
  { "spool soak: reopen after a crash, 100k / 10k", grab("spool", "reopen time ([%d.]+),"), "flat (1.0)" },
  { "queue: q:push/s, Redis appendfsync always / everysec",
    grab("queue", "appendfsync always%s+(%d+/s)") .. " / " .. grab("queue", "appendfsync everysec%s+(%d+/s)"), "-" },
  { "queue: q:push (fsync everysec) / spool d:fire", grab("queue", "fsync everysec%) / d:fire with spool:%s+([%d.]+)"), "-" },
  { "queue: delivery, 1 worker / spool dispatcher", grab("queue", "delivery, 1 worker / spool dispatcher:%s+([%d.]+)"), "-" },
  { "queue: end to end, 2 worker processes / spool dispatcher",
    grab("queue", "end to end, 2 worker processes / spool dispatcher:%s+([%d.]+)"), "-" },
  { "gateway: conversions/s vs /health, 16 clients", grab("gateway", "gateway ratio 16 clients: ([%d.]+)"), "-" },
  { "gateway: conversions/s vs /health, 64 clients", grab("gateway", "gateway ratio 64 clients: ([%d.]+)"), "-" },
  { "gateway: reload halfway, 32 clients", grab("gateway", "reload halfway, 32 clients: ([^\n]-) accepted"),
    "every 202 delivered" },
}

local lines = { "| measure | result | target |", "|---|---|---|" }
for _, r in ipairs(rows) do lines[#lines + 1] = ("| %s | %s | %s |"):format(r[1], r[2], r[3]) end
local table_text = table.concat(lines, "\n")

local cpu = first_line("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
local machine = ("%s cores (%s), %s, %s, %s"):format(first_line("nproc"), cpu:gsub("^%s+", ""),
  first_line("uname -sr"), first_line(lua .. " -v"), first_line("curl --version"))

print("\n" .. table_text)
print("\nmachine: " .. machine)

local f = assert(io.open("bench/RESULTS.md", "w"))
f:write("# Benchmark results\n\n", "Written by `make bench` on ", os.date("!%Y-%m-%d"), ".\n\n",
  "Machine: ", machine, "\n\n", table_text, "\n\n",
  "Notes: the firing ratios are wall-clock rates on a shared 2-core machine, best of five\n",
  "interleaved rounds, so they move by 10-20% between runs. The Lua-cURLv3 rows need its lcurl\n",
  "module (point LCURL_CPATH at it); they read n/a without it. wrk is the HTTP ceiling, not a\n",
  "libcurl peer.\n")
for _, b in ipairs(benches) do
  f:write("\n## ", b.script, "\n\n```\n", outputs[b.name], "```\n")
end
f:close()
print("written to bench/RESULTS.md")
