--- Runs `postback worker` (bin/postback) as real processes for the queue
-- specs and the queue benchmark, and counts what a receiver got.
--
--   local workerproc = require "workerproc"
--   local pid = workerproc.spawn({ "--redis", url, "--stream", "pbq" }, logfile)
--   workerproc.kill(pid)           -- kill -9
local testenv = require "testenv"

local M = {}

local shell_quote = require("fixtures").sh
M.shell_quote = shell_quote

--- Starts `<lua> bin/postback worker ARGS...` in the background; returns
-- its pid. Its stdout and stderr go to `log` (default /dev/null).
-- Another interpreter than the one under test gets none of its module
-- paths: bin/postback finds the build for its own version.
function M.spawn(args, log, lua)
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = shell_quote(a) end
  lua = lua or testenv.lua
  local paths = "-u LUA_PATH -u LUA_CPATH"
  if lua == testenv.lua then
    paths = ("LUA_PATH=%s LUA_CPATH=%s"):format(shell_quote(package.path), shell_quote(package.cpath))
  end
  local cmd = ("env %s %s bin/postback worker %s >%s 2>&1 </dev/null & echo $!"):format(
    paths, lua, table.concat(quoted, " "), shell_quote(log or "/dev/null"))
  local p = assert(io.popen(cmd))
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid
end

--- Sends a signal (default KILL) and waits until the process is gone.
function M.kill(pid, sig)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig or "9", pid))
  require("redisproc").wait_gone(pid)
end

--- true while pid runs (a zombie does not).
function M.alive(pid)
  local ok = os.execute(("env -u LD_PRELOAD sh -c 'kill -0 %d 2>/dev/null && ! ps -o stat= -p %d | grep -q Z'")
    :format(pid, pid))
  return ok == true or ok == 0
end

--- Lines of a file (0 when it does not exist), and a count per line.
function M.count_lines(path)
  local f = io.open(path)
  if not f then return 0, {} end
  local n, seen = 0, {}
  for line in f:lines() do
    n = n + 1
    seen[line] = (seen[line] or 0) + 1
  end
  f:close()
  return n, seen
end

--- An nginx receiver that answers 204 to /pb and logs each request's `c`
-- query parameter, one a line, to `log` (see nginxproc).
function M.receiver(log)
  local nginxproc = require "nginxproc"
  return nginxproc.start {
    http = "log_format pbc '$arg_c';",
    locations = ("location /pb { access_log %s pbc; return 204; }"):format(log),
  }
end

return M
