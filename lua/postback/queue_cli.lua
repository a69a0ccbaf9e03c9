--- The queue's commands of the command line: `postback worker` and
-- `postback dlq`. Each takes the arguments after its name and returns the
-- exit status: 0 ok, 1 failed, 2 usage error (one line on stderr).
--
--   postback worker --redis URL [--stream S] [--group G] [--concurrency N] [--timeout S]
--                   [--allow-private] [--allow-network CIDR]... [--metrics HOST:PORT] ...
--   postback dlq list|replay|purge --redis URL [--stream S] ...
local util = require "postback.util"

local M = {}

local WORKER_HELP = [[
usage: postback worker --redis URL [options]
  Delivers the entries of a queue stream until it is killed (Ctrl-C stops it).
  --redis URL            redis://[:password@]host[:port][/db] or unix:///path[?db=N]
  --stream S             the stream (default postbacks)
  --group G              the consumer group (default postback)
  --consumer NAME        this worker's name in the group (default host-pid-random)
  --concurrency N        postbacks in flight at once (default 16)
  --timeout S            seconds per attempt (default 10)
  --connect-timeout S    seconds to connect to a receiver (default 5)
  --retries N            retries after the first attempt (default 10; exponential backoff)
  --retry-schedule LIST  the waits between attempts instead, e.g. 5,300,1800 (seconds)
  --claim-idle S         reclaim entries of stopped workers idle this long
                         (default timeout + 10; at least timeout + 5)
  --allow-private        allow receivers on private and loopback addresses
  --allow-network CIDR   allow receivers in this network (repeatable)
  --header "N: V"        an extra request header on every postback (repeatable)
  --log-max N            entries kept in the delivery log stream (default 10000, 0 = none)
  --metrics HOST:PORT    serve Prometheus metrics at http://HOST:PORT/metrics
  --quiet                no status lines on stderr]]

local DLQ_HELP = [[
usage: postback dlq list|replay|purge --redis URL [--stream S] [options]
  list     the dead letters as JSON lines, oldest first (--count N, default 100; --after ID)
  replay   puts dead letters back on the stream, attempts from zero (--id ID... or all)
  purge    deletes dead letters (--id ID..., or --all)]]

local function fail(code, msg)
  io.stderr:write("postback: ", msg, "\n")
  return code
end

-- A value as it appears in a message: quoted, control bytes replaced.
local function quote(v)
  return "'" .. tostring(v):gsub("%c", "?") .. "'"
end

-- A number flag's value, checked as bin/postback checks its own: the
-- number, or nil and the message. r = {min, max, integer = true}.
local function number(name, value, r)
  local n = util.decimal(value, r.integer)
  if n and n >= r[1] and n <= r[2] then return n end
  return nil, ("--%s takes %s from %s to %s, got %s"):format(name, r.integer and "an integer" or "a number",
    r[1], r[2], quote(value))
end

-- Strict flags, read as bin/postback reads those of the other commands:
-- --name VALUE or --name=VALUE (a value taken from the next argument does
-- not start with --), -h for --help, and -- ends the flags. spec maps a
-- name to "string", "flag", "list" or a number range (see number).
-- Returns flags, positional arguments; or nil, message.
local function parse(argv, spec)
  local flags, args, i = {}, {}, 1
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      for j = i + 1, #argv do args[#args + 1] = argv[j] end
      break
    end
    local name, value = a:match("^%-%-([%w-]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w-]+)$") end
    if a == "-h" then name = "help" end
    if name then
      local kind = spec[name]
      if not kind then return nil, "unknown option --" .. name end
      if kind == "flag" then
        if value ~= nil then return nil, "--" .. name .. " takes no value" end
        flags[name] = true
      else
        if value == nil then
          i = i + 1
          value = argv[i]
          if value == nil or value:sub(1, 2) == "--" then return nil, "--" .. name .. " needs a value" end
        end
        if type(kind) == "table" then
          local n, err = number(name, value, kind)
          if not n then return nil, err end
          value = n
        end
        if kind == "list" then
          flags[name] = flags[name] or {}
          table.insert(flags[name], value)
        else
          flags[name] = value
        end
      end
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return nil, "unknown option " .. a
    else
      args[#args + 1] = a
    end
    i = i + 1
  end
  return flags, args
end

-- The flags of `postback NAME`: flags, arguments; or nil and the exit
-- status once a usage error or the help (--help) is printed.
local function command_flags(name, argv, spec, help)
  local flags, args = parse(argv, spec)
  if not flags then return nil, fail(2, args .. " (postback " .. name .. " --help)") end
  if flags.help then
    io.write(help, "\n")
    return nil, 0
  end
  return flags, args
end

local function first_line(err)
  return (tostring(err):match("^[^\n]*"))
end

-- An error the library raised, as one line for the command line: what was
-- wrong, without the Lua file and line or the "bad argument" around it.
local function raised(err)
  local msg = first_line(err)
  return msg:match("bad argument #%d+ to '[^']*' %((.*)%)$") or (msg:gsub("^[^%s:]+%.lua:%d+: ", ""))
end

-- The ranges of the library's own checks (the dispatcher's concurrency,
-- the transfer's timeouts), so that a value the command line takes is one
-- the worker takes.
local WORKER_FLAGS = {
  redis = "string", stream = "string", group = "string", consumer = "string",
  concurrency = { 1, 100000, integer = true }, timeout = { 0.001, 1000000 },
  ["connect-timeout"] = { 0.001, 1000000 }, retries = { 0, 1000000, integer = true },
  ["retry-schedule"] = "string", ["claim-idle"] = { 0, 10000000 },
  ["allow-private"] = "flag", ["allow-network"] = "list", header = "list",
  ["log-max"] = { 0, 1000000000, integer = true }, metrics = "string", quiet = "flag", help = "flag",
}

--- postback worker ...: runs a worker until it is interrupted.
function M.worker(argv)
  local flags, args = command_flags("worker", argv, WORKER_FLAGS, WORKER_HELP)
  if not flags then return args end
  if #args > 0 then return fail(2, "worker takes no arguments, got " .. args[1]) end
  if not flags.redis then return fail(2, "worker needs --redis URL") end
  local opts = {
    redis = flags.redis, stream = flags.stream, group = flags.group, consumer = flags.consumer,
    concurrency = flags.concurrency, timeout = flags.timeout, connect_timeout = flags["connect-timeout"],
    retries = flags.retries, claim_idle = flags["claim-idle"], log_max = flags["log-max"],
    metrics = flags.metrics,
  }
  if flags["retry-schedule"] then
    local list = {}
    for item in (flags["retry-schedule"] .. ","):gmatch("([^,]*),") do
      local n = util.decimal(item)
      if not n or n > 10000000 then
        return fail(2, "--retry-schedule needs seconds separated by commas, e.g. 5,300,1800")
      end
      list[#list + 1] = n
    end
    opts.retry_schedule = list
  end
  local timeout = flags.timeout or 10
  if flags["claim-idle"] and flags["claim-idle"] < timeout + 5 then
    return fail(2, ("--claim-idle must be at least the timeout + 5 s (%g): a shorter one delivers twice"):format(timeout + 5))
  end
  -- Only what was asked for: dispatchers that do not know these options keep their defaults.
  if flags["allow-private"] then opts.allow_private = true end
  if flags["allow-network"] then opts.allow_networks = flags["allow-network"] end
  if flags.header then
    local headers = {}
    for _, h in ipairs(flags.header) do
      local n, v = h:match("^([^:]+):%s*(.*)$")
      if not n then return fail(2, "--header needs \"Name: value\", got " .. h) end
      headers[n] = v
    end
    opts.headers = headers
  end

  local postback = require "postback"
  local ok, w, err = pcall(postback.worker, opts)
  if not ok then return fail(2, raised(w)) end
  if not w then
    return fail(err.kind == "validation" and 2 or 1, first_line(err))
  end
  local quiet = flags.quiet
  local function say(fmt, ...)
    if not quiet then io.stderr:write(("postback worker: " .. fmt .. "\n"):format(...)) end
  end
  say("%s reading %s (group %s) from %s", w.consumer, w.stream, w.group, w.conn.where)
  if w.metrics_port then say("metrics on http://%s/metrics", flags.metrics:gsub(":%d+$", ":" .. w.metrics_port)) end

  local was_up, last_err = false, nil
  local function loop()
    while true do
      w:poll(1)
      local up = w.conn:ready()
      if up ~= was_up then
        if up then say("connected") else say("disconnected: %s", tostring(w.conn.last_error)) end
        was_up = up
      end
      -- each new error once (a Redis that stays away repeats the same one)
      local e = w.last_error or (not up and w.conn.last_error) or nil
      if e and e ~= last_err then say("%s", e) end
      last_err = e
    end
  end
  local lok, lerr = pcall(loop)
  w:close(2)
  if not lok then
    if tostring(lerr):find("interrupted", 1, true) then return 130 end
    return fail(1, first_line(lerr))
  end
  return 0
end

-- Exit status 1 when some of the ids given were not dead letters (n of
-- them were replayed or purged), else 0.
local function missing_ids(ids, n)
  if not ids then return 0 end
  local distinct, seen = 0, {}
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      distinct = distinct + 1
    end
  end
  if n >= distinct then return 0 end
  return fail(1, ("%d of %d id%s %s"):format(distinct - n, distinct, distinct == 1 and "" or "s",
    distinct - n == 1 and "is not a dead letter" or "are not dead letters"))
end

local DLQ_FLAGS = {
  redis = "string", stream = "string", count = { 1, 1000000000, integer = true }, after = "string", id = "list",
  all = "flag", help = "flag",
}

--- postback dlq list|replay|purge ...
function M.dlq(argv)
  local flags, args = command_flags("dlq", argv, DLQ_FLAGS, DLQ_HELP)
  if not flags then return args end
  local action = args[1]
  if action ~= "list" and action ~= "replay" and action ~= "purge" then
    return fail(2, "dlq needs list, replay or purge" .. (action and (", got " .. action) or ""))
  end
  if #args > 1 then return fail(2, "dlq " .. action .. " takes no other arguments, got " .. args[2]) end
  if not flags.redis then return fail(2, "dlq needs --redis URL") end
  if action == "purge" and not flags.id and not flags.all then
    return fail(2, "dlq purge needs --id ID (repeatable) or --all")
  end
  local postback = require "postback"
  local ok, q, err = pcall(postback.queue, { redis = flags.redis, stream = flags.stream })
  if not ok then return fail(2, raised(q)) end
  if not q then return fail(err.kind == "validation" and 2 or 1, first_line(err)) end
  local json = require "postback.json"
  local code = 0
  if action == "list" then
    local list, lerr = q:dead { count = flags.count or 100, after = flags.after }
    if not list then
      code = fail(1, first_line(lerr))
    else
      for _, e in ipairs(list) do io.write(assert(json.encode(e)), "\n") end
    end
  elseif action == "replay" then
    local n, rerr = q:replay(flags.id)
    if not n then
      code = fail(1, first_line(rerr))
    else
      io.write(("replayed %d\n"):format(n))
      code = missing_ids(flags.id, n)
    end
  else
    local ids = (not flags.all) and flags.id or nil
    local n, perr = q:purge(ids)
    if not n then
      code = fail(1, first_line(perr))
    else
      io.write(("purged %d\n"):format(n))
      code = missing_ids(ids, n)
    end
  end
  q:close()
  return code
end

return M
