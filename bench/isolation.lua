-- Head-of-line isolation: 16 postbacks to a healthy receiver (a loopback
-- nginx answering 204) fired alone, then behind 48 postbacks to a receiver
-- that accepts and never answers (spec/support/hostile.lua's /silent,
-- reached as localhost), 64 slots in all, through fire_many and through a
-- dispatcher. Prints the healthy postbacks' completion times (p50 and max,
-- since the batch started) alone and behind the silent ones, and how many
-- were delivered; best of ROUNDS runs. Target: every healthy postback
-- delivered, its max within 100 ms of its time alone.
--
--   make bench   (or: lua5.4 bench/isolation.lua [ROUNDS] [TIMEOUT_S])
package.path = "spec/support/?.lua;" .. package.path
local postback = require "postback"
local core = require "postback.core"
local hostile = require "hostile"
local nginxproc = require "nginxproc"

local ROUNDS = tonumber(arg[1]) or 3
local TIMEOUT = tonumber(arg[2]) or 2
local SILENT, HEALTHY = 48, 16

local silent = hostile.start()
local ngx = nginxproc.start { locations = "location / { return 204; }" }

local function items(with_silent)
  local list = {}
  if with_silent then
    for i = 1, SILENT do list[#list + 1] = ("http://localhost:%d/silent/%d"):format(silent.port, i) end
  end
  for i = 1, HEALTHY do list[#list + 1] = ("%s/healthy/%d"):format(ngx.url, i) end
  return list
end

-- Completion times of the healthy postbacks (nil when not delivered).
local function run(via, with_silent)
  local first = with_silent and SILENT or 0
  local times, t0 = {}, nil
  local opts = { allow_private = true, concurrency = SILENT + HEALTHY, timeout = TIMEOUT, retries = 0,
    on_result = function(r, i)
      local k = (i or r.id) - first
      if k >= 1 and r.ok then times[k] = core.now() - t0 end
    end }
  local list = items(with_silent)
  if via == "fire_many" then
    t0 = core.now()
    postback.fire_many(list, opts)
  else
    local d = postback.dispatcher(opts)
    t0 = core.now()
    for _, url in ipairs(list) do assert(d:fire(url)) end
    while d:pending() > 0 and core.now() - t0 < TIMEOUT + 1 do
      d:poll(0.005)
      local n = 0
      for k = 1, HEALTHY do if times[k] then n = n + 1 end end
      if n == HEALTHY then break end
    end
    d:close()
  end
  return times
end

local function summary(times)
  local list, delivered = {}, 0
  for k = 1, HEALTHY do
    list[#list + 1] = times[k] or math.huge
    if times[k] then delivered = delivered + 1 end
  end
  table.sort(list)
  return list[math.floor((#list + 1) / 2)], list[#list], delivered
end

local function ms(s)
  return s == math.huge and "never" or ("%.1f ms"):format(s * 1000)
end

print(("isolation: %d healthy postbacks alone, then behind %d to a silent receiver (%d slots, timeout %g s), best of %d")
  :format(HEALTHY, SILENT, SILENT + HEALTHY, TIMEOUT, ROUNDS))
local summaries = {}
for _, via in ipairs { "fire_many", "dispatcher" } do
  local best
  for _ = 1, ROUNDS do
    local a50, amax = summary(run(via, false))
    local m50, mmax, delivered = summary(run(via, true))
    if not best or delivered > best.delivered or (delivered == best.delivered and mmax - amax < best.mmax - best.amax) then
      best = { a50 = a50, amax = amax, m50 = m50, mmax = mmax, delivered = delivered }
    end
  end
  print(("%-10s alone p50 %s max %s | behind silent p50 %s max %s")
    :format(via, ms(best.a50), ms(best.amax), ms(best.m50), ms(best.mmax)))
  summaries[#summaries + 1] = ("%s isolation: %d/%d delivered, max over alone %s")
    :format(via, best.delivered, HEALTHY, ms(best.mmax - best.amax))
end
print(table.concat(summaries, "\n"))

silent:stop()
ngx:stop()
