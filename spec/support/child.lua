--- Runs Lua code in child processes under a hard time limit, so that a call
-- which never returns fails its test instead of hanging the suite.
--
--   local child = require "child"
--   local r = child.run([[
--     local url = ...
--     local postback = require "postback"
--     return { result = postback.fire(url, nil, { allow_private = true }) }
--   ]], { args = { url }, limit = 10 })
--   r.value      what the chunk returned, through JSON (error tables become
--                plain tables with kind, message, ..., and text = tostring(err))
--   r.raised     the error message when the chunk raised
--   r.timed_out  true when the limit killed it
--   r.status, r.stderr, r.seconds (wall time of the whole child)
--
-- child.run_all(cases, parallel) runs {code, opts} cases, `parallel` at a
-- time, and returns their results in order. The child uses the interpreter
-- of the run (testenv.lua) with this process's module paths.
--
-- child.spawn(code, opts) starts a child in the background instead
-- ({pid, pipe}); child.kill(p) kills it (kill -9), child.wait(p) waits for
-- its end; both give the rest of its output.
local cjson = require("cjson.safe").new()
local socket = require "socket"
local testenv = require "testenv"

local M = {}

local shell_quote = require("fixtures").sh

-- The wrapper each child runs: code file, then the chunk's arguments.
local WRAPPER = [==[
local cjson = require("cjson.safe").new()
cjson.encode_sparse_array(true)
cjson.encode_invalid_numbers(true)
local unpack = table.unpack or unpack
local function plain(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" or t == "number" or t == "boolean" or t == "nil" then return v end
  if t ~= "table" or depth > 8 then return tostring(v) end
  local out = {}
  if getmetatable(v) and getmetatable(v).__tostring then out.text = tostring(v) end
  for k, x in pairs(v) do
    if type(k) == "string" or type(k) == "number" then out[k] = plain(x, depth + 1) end
  end
  return out
end
local f = assert(io.open(arg[1], "rb"))
local code = f:read("*a")
f:close()
local chunk = assert((loadstring or load)(code, "=child"))
local args = {}
for i = 2, #arg do args[#args + 1] = arg[i] end
local ok, value = pcall(chunk, unpack(args))
io.stdout:write("\nRESULT ", assert(cjson.encode(ok and { value = plain(value) } or { raised = tostring(value) })), "\n")
io.stdout:flush()
os.exit(0)
]==]

local tmpdir

local function dir()
  if not tmpdir then
    tmpdir = require("fixtures").tmpdir()
    local f = assert(io.open(tmpdir .. "/wrapper.lua", "w"))
    f:write(WRAPPER)
    f:close()
  end
  return tmpdir
end

local function slurp(path)
  return require("fixtures").readfile(path) or ""
end

local spit = require("fixtures").writefile

local counter = 0

-- The shell command of one case, and where its output goes.
local function prepare(code, opts)
  counter = counter + 1
  local d = dir()
  local base = ("%s/case%d"):format(d, counter)
  spit(base .. ".lua", code)
  local args = {}
  for i, a in ipairs(opts.args or {}) do args[i] = shell_quote(a) end
  local env = ("LUA_PATH=%s LUA_CPATH=%s"):format(shell_quote(package.path), shell_quote(package.cpath))
  local run = ("timeout -k 2 %d %s %s %s %s"):format(math.ceil(opts.limit or 10), testenv.lua,
    shell_quote(d .. "/wrapper.lua"), shell_quote(base .. ".lua"), table.concat(args, " "))
  if opts.wrap then run = opts.wrap(run) end
  local cmd = ("%s %s >%s.out 2>%s.err; echo $? >%s.rc"):format(env, run, base, base, base)
  return cmd, base
end

local function collect(base, seconds)
  local out = slurp(base .. ".out")
  local status = tonumber(slurp(base .. ".rc"):match("%d+"))
  local r = { status = status, stdout = out, stderr = slurp(base .. ".err"), seconds = seconds }
  r.timed_out = status == 124 or status == 137
  local line = out:match("\nRESULT ([^\n]*)\n") or out:match("^RESULT ([^\n]*)\n")
  local doc = line and cjson.decode(line)
  if doc then
    r.value, r.raised = doc.value, doc.raised
  elseif not r.timed_out then
    r.raised = "the child died without a result (status " .. tostring(status) .. "): " .. r.stderr:sub(1, 500)
  end
  for _, ext in ipairs { ".lua", ".out", ".err", ".rc" } do os.remove(base .. ext) end
  return r
end

--- Runs one chunk in a child process; see the top of the file.
-- opts: args (strings), limit (seconds, default 10), wrap (a function
-- given the shell command that runs the child, returning the command to run
-- instead: `function(cmd) return "unshare -n sh -c " .. child.quote(cmd) end`).
function M.run(code, opts)
  return M.run_all({ { code, opts } }, 1)[1]
end

--- Runs many {code, opts} cases, `parallel` (default 8) at a time.
function M.run_all(cases, parallel)
  parallel = parallel or 8
  local results = {}
  local i = 1
  while i <= #cases do
    local cmds, bases = {}, {}
    for j = i, math.min(#cases, i + parallel - 1) do
      local cmd, base = prepare(cases[j][1], cases[j][2] or {})
      cmds[#cmds + 1] = "( " .. cmd .. " ) &"
      bases[#bases + 1] = base
    end
    local t0 = socket.gettime()
    os.execute(table.concat(cmds, "\n") .. "\nwait")
    local seconds = socket.gettime() - t0
    for _, base in ipairs(bases) do results[#results + 1] = collect(base, seconds) end
    i = i + parallel
  end
  os.execute("rm -rf " .. shell_quote(tmpdir))
  tmpdir = nil
  return results
end

--- A string quoted for the shell.
M.quote = shell_quote

-- This process's module paths with relative entries made absolute (a
-- spawned child may run in another directory).
function M.absolute(paths)
  local p = assert(io.popen("pwd"))
  local cwd = p:read("*l")
  p:close()
  local out = {}
  for entry in paths:gmatch("[^;]+") do
    if entry:sub(1, 1) ~= "/" then entry = cwd .. "/" .. entry end
    out[#out + 1] = entry
  end
  return table.concat(out, ";") .. ";;"
end

--- Starts a chunk of Lua in a child process in the background, with the
-- interpreter of the run and this process's module paths, and returns
-- {pid =, pipe =}: the pipe reads its output. opts: args (strings: arg[1],
-- ...), dir (its working directory), merge_stderr (its stderr into the
-- pipe too). End it with child.kill(p) or child.wait(p).
function M.spawn(code, opts)
  opts = opts or {}
  local script = os.tmpname()
  spit(script, code)
  local args = {}
  for i, a in ipairs(opts.args or {}) do args[i] = shell_quote(a) end
  local inner = ("echo $$; %sexec env LUA_PATH=%s LUA_CPATH=%s %s %s %s"):format(
    opts.dir and ("cd " .. shell_quote(opts.dir) .. " && ") or "", shell_quote(M.absolute(package.path)),
    shell_quote(M.absolute(package.cpath)), testenv.lua, shell_quote(script), table.concat(args, " "))
  local pipe = assert(io.popen("exec sh -c " .. shell_quote(inner) .. (opts.merge_stderr and " 2>&1" or "")))
  local pid = tonumber(pipe:read("*l"))
  if not pid then
    pipe:close()
    os.remove(script)
    error("the child did not start", 2)
  end
  return { pid = pid, pipe = pipe, script = script }
end

--- Waits until a spawned child ends: the rest of its output.
function M.wait(p)
  if not p.pipe then return "" end -- waited for already
  local out = p.pipe:read("*a") or ""
  p.pipe:close()
  p.pipe = nil
  os.remove(p.script)
  return out
end

--- Kills a spawned child (kill -9): the rest of its output. Nothing when it
-- was waited for already.
function M.kill(p)
  if not p.pipe then return "" end
  os.execute(("kill -9 %d 2>/dev/null"):format(p.pid))
  return M.wait(p)
end

--- A one-line account of a child's outcome, for assertion messages.
function M.describe(r)
  if r.timed_out then return "killed at the time limit (the call never returned)" end
  if r.raised then return "raised: " .. tostring(r.raised) end
  return "returned: " .. tostring(cjson.encode(r.value))
end

return M
