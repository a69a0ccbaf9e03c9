-- The spool (postback.spool) and the dispatcher's use of it, on real files,
-- real processes and, as root, a real full file system and other users.
local postback = require "postback"
local spool = require "postback.spool"
local core = require "postback.core"
local testenv = require "testenv"
local mockproc = require "mockproc"
local nginxproc = require "nginxproc"

local ENOSPC, EACCES = 28, 13

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

local quote = require("child").quote

local tmpdir = require("fixtures").tmpdir

local function rmrf(d)
  os.execute("rm -rf " .. quote(d))
end

local read = require("fixtures").readfile

local write = require("fixtures").writefile

-- os.execute succeeded (exit status 0).
local run = require("fixtures").run

local function exists(path)
  return run("test -e " .. quote(path))
end

-- "uid gid mode size" of a file.
local function stat(path)
  return (sh("stat -c '%u %g %a %s' " .. quote(path) .. " 2>/dev/null"):gsub("%s+$", ""))
end

local function own_pid()
  local f = assert(io.open("/proc/self/stat"))
  local pid = tonumber(f:read("*l"):match("^(%d+)"))
  f:close()
  return pid
end

local is_root = sh("id -u"):match("^0%s") ~= nil

-- A new 64 KiB tmpfs (a disk that fills): its mount point, or nil and why
-- not (pending).
local function small_tmpfs()
  if not is_root then return nil, "needs root to mount a tmpfs" end
  local mnt = tmpdir()
  if not run("mount -t tmpfs -o size=64k tmpfs " .. quote(mnt) .. " 2>/dev/null") then
    rmrf(mnt)
    return nil, "mounting a tmpfs is not permitted here"
  end
  return mnt
end

local function unmount(mnt)
  os.execute("umount " .. quote(mnt))
  rmrf(mnt)
end
local has_setpriv = sh("command -v setpriv"):match("%S") ~= nil
local nobody_uid = tonumber(sh("id -u nobody 2>/dev/null"):match("%d+") or "")
local nobody_gid = tonumber(sh("id -g nobody 2>/dev/null"):match("%d+") or "")

-- Runs Lua code in a child process (this build, the interpreter under
-- test), as `uid`:`gid` when given; returns what it printed.
local function child(code, uid, gid)
  local script = os.tmpname()
  write(script, code)
  os.execute("chmod 0644 " .. quote(script))
  local prefix = uid and ("setpriv --reuid=%d --regid=%d --clear-groups "):format(uid, gid) or ""
  local out = sh(("%senv LUA_PATH=%s LUA_CPATH=%s %s %s 2>&1"):format(prefix, quote(package.path),
    quote(package.cpath), testenv.lua, quote(script)))
  os.remove(script)
  return out
end

-- Children started in the background (child.spawn).
local background = require "child"

local function owed_ids(sp)
  local ids = {}
  for id in sp:owed() do ids[#ids + 1] = id end
  return ids
end

local function collector()
  local list = {}
  return list, function(e) list[#list + 1] = e end
end

local function parse_query(q)
  local t = {}
  for k, v in (q or ""):gmatch("([^&=]+)=([^&]*)") do t[k] = v end
  return t
end

describe("postback.spool", function()
  local dir, path

  before_each(function()
    dir = tmpdir()
    path = dir .. "/s.spool"
  end)

  after_each(function() rmrf(dir) end)

  it("adds, marks done, lists what is owed in id order, and reopens", function()
    local sp = assert(spool.open(path))
    assert.equal(1, sp:add { url = "http://a/1" })
    assert.equal(2, sp:add { url = "http://a/2", headers = { "X-A: 1" } })
    assert.equal(3, sp:add { url = "http://a/3" })
    assert.is_true(sp:done(2))
    assert.is_false(sp:done(2))
    assert.is_false(sp:done(77))
    assert.is_true(sp:sync())
    local got = {}
    for id, rec in sp:owed() do got[#got + 1] = id .. "=" .. rec.url end
    assert.same({ "1=http://a/1", "3=http://a/3" }, got)
    local st = sp:stats()
    assert.equal(2, st.owed)
    assert.equal(3, st.added)
    assert.equal(1, st.done)
    assert.equal(3, st.last_id)
    assert.equal(#read(path), st.bytes)
    assert.matches("postback.spool %(.*s.spool, 2 owed%)", tostring(sp))
    assert.is_true(sp:close())
    assert.is_true(sp:close())
    assert.equal("postback.spool (closed)", tostring(sp))

    sp = assert(spool.open(path))
    assert.same({ 1, 3 }, owed_ids(sp))
    assert.equal(1, sp:stats().compactions) -- the done record went away
    assert.is_true(sp:done(1))
    assert.is_true(sp:done(3))
    sp:close()
    sp = assert(spool.open(path))
    assert.same({}, owed_ids(sp))
    assert.equal(4, sp:add { url = "http://a/4" }) -- ids go on, even with nothing owed
    sp:close()
  end)

  it("checks its arguments; a closed spool raises", function()
    assert.has_error(function() spool.open(5) end, "bad argument #1 to 'open' (path expected, got number)")
    assert.has_error(function() spool.open(path, 5) end, "bad argument #2 to 'open' (table expected, got number)")
    assert.has_error(function() spool.open(path, { compact_afer = 5 }) end,
      "bad argument #2 to 'open' (unknown option 'compact_afer')")
    assert.has_error(function() spool.open(path, { compact_after = 0 }) end)
    assert.has_error(function() spool.open(path, { max_record = 1.5 }) end)
    assert.has_error(function() spool.open(path, { on_error = "x" }) end)
    local sp = assert(spool.open(path, { max_record = 100 }))
    assert.has_error(function() sp:add("x") end, "bad argument #1 to 'add' (table expected, got string)")
    assert.has_error(function() sp:done("1") end, "bad argument #1 to 'done' (id expected, got string)")
    assert.has_error(function() sp:done(1.5) end, "bad argument #1 to 'done' (id must be a positive integer)")
    local id, err = sp:add { url = string.rep("x", 200) }
    assert.is_nil(id)
    assert.equal("spool", err.kind)
    assert.equal("too_large", err.code)
    id, err = sp:add { f = function() end }
    assert.is_nil(id)
    assert.equal("invalid", err.code)
    sp:close()
    assert.has_error(function() sp:add {} end, "spool is closed")
    assert.has_error(function() sp:stats() end, "spool is closed")
  end)

  it("refuses a directory, a path with NUL and a missing directory with nil, err", function()
    for _, p in ipairs { dir, dir .. "/s\0x", dir .. "/no/such", "" } do
      local sp, err = spool.open(p)
      assert.is_nil(sp)
      assert.equal("spool", err.kind)
      assert.is_string(err.message)
      assert.truthy(tostring(err):find("spool error", 1, true))
    end
    assert.is_nil(read(dir .. "/s"))
    assert.equal("", sh("ls -A " .. quote(dir))) -- nothing created
    local d = postback.dispatcher { spool = dir }
    assert.is_nil(d)
  end)

  it("opens no record file for a path with NUL (core.spool_open), as the spool does not", function()
    local f, err = core.spool_open(dir .. "/j\0x")
    assert.is_nil(f)
    assert.equal("the spool path holds a NUL byte", err)
    local sp, serr = core.spool(dir .. "/j\0x")
    assert.is_nil(sp)
    assert.equal(err, serr.message)
    assert.equal("", sh("ls -A " .. quote(dir))) -- nothing created
  end)

  it("reads the records after any number: a bound past every id, NaN refused", function()
    local c = assert(core.spool(path))
    assert.equal(1, c:add("one"))
    assert.equal(2, c:add("two"))
    for _, case in ipairs { { -math.huge, 1 }, { -5, 1 }, { 0, 1 }, { 1.5, 2 }, { 2, nil },
                            { 2 ^ 53, nil }, { 2 ^ 80, nil }, { math.huge, nil } } do
      assert.equal(case[2], (c:next(case[1])), "after " .. tostring(case[1]))
    end
    assert.has_error(function() c:next(0 / 0) end, "bad argument #1 to 'next' (after is NaN)")
    c:close()
  end)

  it("compacts while it runs: the file follows what is owed and keeps its mode", function()
    local sp = assert(spool.open(path, { compact_after = 50 }))
    assert(run("chmod 0640 " .. quote(path)))
    local oldest, peak = 1, 0
    local n = testenv.slow and 2000 or 20000
    for i = 1, n do
      local id = assert(sp:add { url = "http://example.com/pb?click_id=" .. i })
      if id - oldest >= 100 then
        assert.is_true(sp:done(oldest))
        oldest = oldest + 1
      end
      local bytes = sp:stats().bytes
      if bytes > peak then peak = bytes end
      if i % 10 == 0 then assert(sp:sync()) end
    end
    local st = sp:stats()
    assert.equal(100, st.owed)
    assert.equal(peak, st.peak_bytes)
    assert.is_true(st.compactions > n / 300)
    -- owed: about 100 x 60 bytes; with as many done, plus what came since the last compaction
    assert.is_true(peak < 4 * 100 * 70, "peak " .. peak)
    assert.equal("640", stat(path):match("(%d+) %d+$"))
    assert.is_false(exists(path .. ".tmp"))
    sp:close()
  end)

  -- A process killed at each system call of a compaction (strace injects
  -- SIGKILL at that call, before it runs): however far the compaction got,
  -- the spool reopens with exactly what was owed, byte for byte, nothing
  -- reported damaged, and compacts again (a stale .tmp included).
  it("reopens with exactly what was owed after a kill at each system call of a compaction", function()
    if not sh("command -v strace"):match("%S") then return pending("strace is not installed") end
    local script = dir .. "/compact.lua"
    write(script, [[
      local spool = require "postback.spool"
      local path = arg[1]
      local sp = assert(spool.open(path, { compact_after = 1000000 }))
      for i = 1, 30 do assert(sp:add { url = "http://a.example/pb?n=" .. i }) end
      for i = 1, 20 do assert(sp:done(i)) end
      assert(sp:sync())
      os.remove(path .. ".marker-start")
      assert(sp:compact())
      os.remove(path .. ".marker-end")
      io.write("compacted\n")
      assert(sp:close())
    ]])
    -- runs the script under strace (extra: its options); its output and trace
    local function traced(extra)
      for _, suffix in ipairs { "", ".tmp", ".lock", ".corrupt" } do os.remove(path .. suffix) end
      local trace = dir .. "/trace"
      local out = sh(("env LUA_PATH=%s LUA_CPATH=%s strace -o %s %s %s %s %s 2>&1"):format(
        quote(package.path), quote(package.cpath), quote(trace), extra, testenv.lua, quote(script), quote(path)))
      local lines = {}
      for line in (read(trace) or ""):gmatch("[^\n]+") do lines[#lines + 1] = line end
      return out, lines
    end
    -- the calls between the markers, each with its count among the calls of
    -- its name since the start (strace's when=)
    local out, lines = traced("")
    assert.truthy(out:find("compacted", 1, true), out)
    local seen, window, inside = {}, {}, false
    for _, line in ipairs(lines) do
      local name = line:match("^(%w+)%(")
      if name then
        seen[name] = (seen[name] or 0) + 1
        if line:find("marker-end", 1, true) then break end
        if inside then window[#window + 1] = { name = name, n = seen[name], line = line } end
        if line:find("marker-start", 1, true) then inside = true end
      end
    end
    local names = {}
    for _, c in ipairs(window) do names[c.name] = true end
    assert.is_true(#window >= 5 and names.rename and names.fsync and (names.pwrite64 or names.write) ~= nil,
      "the compaction's calls were not found: " .. table.concat(lines, "\n"))
    for _, c in ipairs(window) do
      local label = ("killed at %s #%d (%s)"):format(c.name, c.n, c.line)
      local kout, klines = traced(("-e inject=%s:signal=KILL:when=%d"):format(c.name, c.n))
      assert.falsy(kout:find("compacted", 1, true), label .. ": it was not killed")
      -- the kill came at that very call, inside the compaction
      local last = klines[#klines] or ""
      assert.truthy(last:find("killed by SIGKILL", 1, true), label .. ": " .. last)
      local hit
      for k = #klines, 1, -1 do
        if klines[k]:match("^(%w+)%(") then hit = klines[k] break end
      end
      -- (strace shows a call cut short by the kill as far as it got)
      hit = (hit or ""):gsub("%s+= %?$", ""):gsub("%s*<unfinished %.%.%.>%)?$", "")
      assert.is_true(#hit > #c.name + 1 and c.line:sub(1, #hit) == hit, label .. ": killed at " .. hit)
      local reports, on_error = collector()
      local sp = assert(spool.open(path, { on_error = on_error }))
      local got = {}
      for id, rec in sp:owed() do got[#got + 1] = id .. " " .. rec.url end
      local want = {}
      for i = 21, 30 do want[#want + 1] = i .. " http://a.example/pb?n=" .. i end
      assert.same(want, got, label)
      assert.same({}, reports, label)
      assert.equal(31, (assert(sp:add { url = "http://a.example/pb?n=31" })), label)
      assert(sp:compact())
      assert.is_false(exists(path .. ".tmp"), label)
      assert.equal(11, sp:stats().owed, label)
      sp:close()
    end
  end)

  describe("lock", function()
    it("refuses a second opener in this process, naming our pid", function()
      local sp = assert(spool.open(path))
      local sp2, err = spool.open(path)
      assert.is_nil(sp2)
      assert.equal("locked", err.code)
      assert.equal(own_pid(), err.pid)
      assert.truthy(err.message:find("in use by process " .. own_pid(), 1, true))
      -- a second dispatcher on it, too
      local d, derr = postback.dispatcher { spool = path }
      assert.is_nil(d)
      assert.equal("locked", derr.code)
      assert.equal(own_pid(), derr.pid)
      sp:close()
      sp2 = assert(spool.open(path)) -- released by close
      sp2:close()
    end)

    it("refuses another process, naming the holder's pid, and holds across compactions", function()
      local sp = assert(spool.open(path, { compact_after = 1 }))
      for _ = 1, 3 do sp:done(assert(sp:add { url = "http://a/" })) end
      assert(sp:sync())
      assert.is_true(sp:stats().compactions >= 1) -- the file was replaced; the lock holds
      local out = child(([[
        local sp, err = require("postback.spool").open(%q)
        io.write(sp and "opened" or err.code, " ", tostring(err and err.pid), "\n")
      ]]):format(path))
      assert.equal("locked " .. own_pid(), out:match("[^\n]*"))
      sp:close()

      -- and the other way round: a child holds it
      local p = background.spawn(([[
        local sp = assert(require("postback.spool").open(%q))
        io.write("held\n") io.flush()
        require("postback.core").sleep(1.5)
      ]]):format(path))
      assert.equal("held", p.pipe:read("*l"))
      local sp2, err = spool.open(path)
      assert.is_nil(sp2)
      assert.equal(p.pid, err.pid)
      background.wait(p)
      sp2 = assert(spool.open(path)) -- its exit released it
      sp2:close()
    end)
  end)

  describe("damaged records", function()
    -- A spool of five records, the file text and where line `n` starts and ends.
    local function five()
      local sp = assert(spool.open(path))
      for i = 1, 5 do sp:add { url = "http://127.0.0.1/pb?click_id=c" .. i } end
      sp:close()
      local text = read(path)
      local starts, pos = {}, 1
      while pos <= #text do
        starts[#starts + 1] = pos
        pos = text:find("\n", pos, true) + 1
      end
      return text, starts
    end

    it("finds every bit flip of a record, moves it to .corrupt, reports it and keeps the others", function()
      local text, starts = five()
      local s, e = starts[3], starts[4] - 1 -- line 3, its '\n' at e
      local cases, step = 0, testenv.slow and 7 or 1
      for pos = s, e, step do
        for bit = 0, 7 do
          local b, v = text:byte(pos), 2 ^ bit
          local nb = math.floor(b / v) % 2 == 1 and b - v or b + v
          local flipped = text:sub(1, pos - 1) .. string.char(nb) .. text:sub(pos + 1)
          write(path, flipped)
          os.remove(path .. ".corrupt")
          local reports, on_error = collector()
          local sp = assert(spool.open(path, { on_error = on_error }))
          local where = ("flip of bit %d at byte %d"):format(bit, pos - s)
          assert.same({ 1, 2, 4, 5 }, owed_ids(sp), where)
          local st = sp:stats()
          assert.is_true(#reports >= 1, where)
          assert.equal(#reports, st.corrupt, where)
          local named = false
          for _, r in ipairs(reports) do
            assert.equal("spool", r.kind)
            assert.equal("damaged", r.code)
            assert.is_true(r.saved)
            if r.offset >= s - 1 and r.offset <= e - 1 then named = true end
          end
          assert.is_true(named, where)
          -- .corrupt holds the damaged bytes, raw
          local damaged = flipped:sub(s, e):gsub("\n", "")
          assert.equal(damaged, (assert(read(path .. ".corrupt"), where):gsub("\n", "")), where)
          sp:close()
          cases = cases + 1
        end
      end
      assert.is_true(cases >= (e - s + 1) * 8 / step - 8)
    end)

    it("finds the last record cut at every byte: torn, moved out, the next add whole", function()
      local text, starts = five()
      local s = starts[5]
      for cut = s, #text do
        write(path, text:sub(1, cut - 1))
        os.remove(path .. ".corrupt")
        local reports, on_error = collector()
        local sp = assert(spool.open(path, { on_error = on_error }))
        if cut == s then
          assert.same({}, reports)
        else
          assert.equal(1, #reports)
          assert.equal("torn", reports[1].reason)
          assert.equal(5, reports[1].line)
          assert.equal(s - 1, reports[1].offset)
          assert.equal(text:sub(s, cut - 1) .. "\n", read(path .. ".corrupt"))
          assert.truthy(tostring(reports[1]):find("line 5", 1, true))
        end
        assert.same({ 1, 2, 3, 4 }, owed_ids(sp))
        local id = assert(sp:add { url = "http://a/next" })
        sp:close()
        reports = {}
        sp = assert(spool.open(path, { on_error = on_error }))
        assert.same({}, reports)
        assert.same({ 1, 2, 3, 4, id }, owed_ids(sp))
        sp:close()
      end
    end)

    it("reports the id when it is readable; a record that is not a JSON table is discarded", function()
      five()
      local f = assert(io.open(path, "ab"))
      f:write("00000000 +9 {\"url\":\"x\"}\n") -- a bad checksum
      f:close()
      local raw = assert(core.spool_open(path)) -- a right checksum, not JSON
      assert(raw:append("+10 not json"))
      raw:close()
      local reports, on_error = collector()
      local sp = assert(spool.open(path, { on_error = on_error }))
      assert.equal(1, #reports)
      assert.equal(9, reports[1].id)
      assert.equal("checksum", reports[1].reason)
      assert.equal(6, reports[1].line)
      assert.same({ 1, 2, 3, 4, 5 }, owed_ids(sp))
      assert.equal(2, #reports)
      assert.equal("discarded", reports[2].code)
      assert.equal(10, reports[2].id)
      assert.equal(1, sp:stats().corrupt)
      sp:close()
      local corrupt = read(path .. ".corrupt")
      assert.truthy(corrupt:find("00000000 +9 {\"url\":\"x\"}\n", 1, true))
      assert.truthy(corrupt:find(" +10 not json\n", 1, true))
      sp = assert(spool.open(path, { on_error = on_error }))
      assert.equal(2, #reports) -- nothing left to report
      sp:close()
    end)
  end)

  describe("ownership and permissions", function()
    local function need_root()
      if not is_root then return "needs root (to chown to nobody and run as nobody)" end
      if not has_setpriv or not nobody_uid then return "needs setpriv and a user nobody" end
    end

    -- Makes a spool with records 1..3 owed and 4 done, owned by uid:gid, mode.
    local function make(uid, gid, mode)
      local sp = assert(spool.open(path))
      for i = 1, 4 do sp:add { url = "http://a/" .. i } end
      sp:done(4)
      sp:close()
      assert(run(("chown %d:%d %s %s.lock && chmod %s %s"):format(uid, gid, quote(path), quote(path),
        mode, quote(path))))
      return read(path), stat(path)
    end

    local open_as_nobody = ([[
      local sp, err = require("postback.spool").open(%s)
      if sp then io.write("opened ", sp:stats().owed, " ", sp:stats().compactions, "\n") sp:close()
      else io.write(err.code, " ", tostring(err.errno), " ", err.message, "\n") end
    ]])

    it("a spool another user owns, mode 0600: nil, err and the file untouched", function()
      local why = need_root()
      if why then return pending(why) end
      assert(run("chmod 0777 " .. quote(dir))) -- nobody could create files here
      local text, st = make(0, 0, "0600")
      local out = child(open_as_nobody:format(("%q"):format(path)), nobody_uid, nobody_gid)
      assert.equal("io " .. EACCES, out:match("^(%S+ %S+)"), out)
      assert.truthy(out:find(path, 1, true))
      assert.equal(text, read(path))
      assert.equal(st, stat(path))
      assert.is_false(exists(path .. ".tmp"))
      assert.is_false(exists(path .. ".corrupt"))
    end)

    it("a read-only spool, and a spool in a directory its user cannot write: nil, err, untouched", function()
      local why = need_root()
      if why then return pending(why) end
      assert(run("chmod 0777 " .. quote(dir)))
      local text, st = make(nobody_uid, nobody_gid, "0400")
      local out = child(open_as_nobody:format(("%q"):format(path)), nobody_uid, nobody_gid)
      assert.equal("io " .. EACCES, out:match("^(%S+ %S+)"), out)
      assert.equal(text, read(path))
      assert.equal(st, stat(path))

      assert(run("chmod 0600 " .. quote(path) .. " && chmod 0755 " .. quote(dir)))
      st = stat(path)
      out = child(open_as_nobody:format(("%q"):format(path)), nobody_uid, nobody_gid)
      assert.equal("io " .. EACCES, out:match("^(%S+ %S+)"), out)
      assert.truthy(out:find("directory", 1, true), out)
      assert.equal(text, read(path))
      assert.equal(st, stat(path))
    end)

    it("compaction keeps the owner and the mode", function()
      local why = need_root()
      if why then return pending(why) end
      assert(run("chmod 0777 " .. quote(dir)))
      make(nobody_uid, nobody_gid, "0640")
      -- its owner opens it: compacted (record 4 was done), mode kept
      local out = child(open_as_nobody:format(("%q"):format(path)), nobody_uid, nobody_gid)
      assert.equal("opened 3 1", out:match("[^\n]*"))
      assert.equal(("%d %d 640"):format(nobody_uid, nobody_gid), stat(path):match("^(%d+ %d+ %d+)"))
      -- root opens it and compacts: owner and mode kept
      local sp = assert(spool.open(path))
      sp:done(3)
      assert(sp:compact())
      sp:close()
      assert.equal(("%d %d 640"):format(nobody_uid, nobody_gid), stat(path):match("^(%d+ %d+ %d+)"))
      sp = assert(spool.open(path))
      assert.same({ 1, 2 }, owed_ids(sp))
      sp:close()
    end)
  end)
end)

-- The receivers are on loopback: each dispatcher allows private destinations.
describe("the dispatcher's spool", function()
  local mock, code, dir, path

  setup(function()
    mock = mockproc.start {}
    code = mock.url .. "/postback?click_id={click_id}&sub={aff_sub1}"
  end)

  teardown(function() mock:stop() end)

  before_each(function()
    mock:reset()
    dir = tmpdir()
    path = dir .. "/d.spool"
  end)

  after_each(function() rmrf(dir) end)

  local function received_ids()
    local ids = {}
    for _, g in ipairs(mock:received()) do
      ids[#ids + 1] = parse_query(g.query).click_id
    end
    table.sort(ids)
    return ids
  end

  it("moves a damaged record to .corrupt, reports it, and delivers the other four", function()
    local d = assert(postback.dispatcher { allow_private = true, spool = path })
    for i = 1, 5 do assert(d:fire(code, { click_id = "c" .. i })) end
    d:close() -- nothing sent: five owed
    local text = read(path)
    local s = 1
    for _ = 1, 2 do s = text:find("\n", s, true) + 1 end -- line 3
    write(path, text:sub(1, s + 20) .. "#" .. text:sub(s + 22))
    local reports, on_error = collector()
    d = assert(postback.dispatcher { allow_private = true, spool = path, on_error = on_error })
    assert.equal(4, d.recovered)
    assert.equal(1, #reports)
    assert.equal(3, reports[1].id)
    assert.equal(3, reports[1].line)
    assert.truthy(tostring(reports[1]):find("moved to " .. path .. ".corrupt", 1, true))
    assert.is_true(d:wait(10))
    local st = d:stats()
    assert.equal(4, st.delivered)
    assert.equal(0, st.failed)
    assert.equal(0, st.pending)
    assert.equal(1, st.spool.corrupt)
    assert.equal(0, st.spool.owed)
    d:close()
    assert.same({ "c1", "c2", "c4", "c5" }, received_ids())
    assert.truthy(read(path .. ".corrupt"):find("#", 1, true))
  end)

  it("discards an owed record that is not a postback, and reports it", function()
    local sp = assert(spool.open(path))
    sp:add { something = "else" }
    sp:add { url = mock.url .. "/postback?click_id=ok" }
    sp:close()
    local reports, on_error = collector()
    local d = assert(postback.dispatcher { allow_private = true, spool = path, on_error = on_error })
    assert.equal(1, d.recovered)
    assert.equal(1, #reports)
    assert.equal("discarded", reports[1].code)
    assert.equal(1, reports[1].id)
    assert.is_true(d:wait(10))
    d:close()
    assert.same({ "ok" }, received_ids())
    assert.truthy(read(path .. ".corrupt"):find("something", 1, true))
  end)

  it("on a full 64 KiB tmpfs, a failed append loses neither the postback before it nor the one after", function()
    local mnt, why = small_tmpfs()
    if not mnt then return pending(why) end
    local d
    finally(function()
      if d then d:close() end -- a spool open on it keeps it busy
      unmount(mnt)
    end)
    local sp_path = mnt .. "/d.spool"
    local reports, on_error = collector()
    d = assert(postback.dispatcher { allow_private = true, spool = sp_path, on_error = on_error })
    assert(d:fire(code, { click_id = "before" }))
    local filler = assert(io.open(mnt .. "/filler", "wb"))
    local kib = string.rep("\0", 1024)
    for _ = 1, 128 do
      if not (filler:write(kib) and filler:flush()) then break end
    end
    filler:close()
    local size = #read(sp_path)
    -- a record that needs a new page: written in part, then ENOSPC
    local big = string.rep("x", 6000)
    for _ = 1, 3 do
      local id, err = d:fire(code, { click_id = "failing", aff_sub1 = big })
      assert.is_nil(id)
      assert.equal("spool", err.kind)
      assert.equal(ENOSPC, err.errno)
      assert.equal(size, #read(sp_path)) -- cut back to the last whole record
    end
    os.remove(mnt .. "/filler")
    assert(d:fire(code, { click_id = "after" }))
    d:close() -- nothing sent: both owed
    d = assert(postback.dispatcher { allow_private = true, spool = sp_path, on_error = on_error })
    assert.equal(2, d.recovered)
    assert.is_true(d:wait(10))
    d:close()
    assert.same({}, reports)
    assert.same({ "after", "before" }, received_ids())
  end)

  it("survives kill -9 while firing and compacting: everything accepted is delivered", function()
    local n = testenv.slow and 1600 or 4000 -- a compaction happens after 1,000 delivered
    local p = background.spawn(([[
      local postback = require "postback"
      local d = assert(postback.dispatcher { allow_private = true, spool = %q, concurrency = 16, timeout = 10 })
      for i = 1, %d do
        while d:pending() >= 200 do d:poll(0.005) end
        assert(d:fire(%q, { click_id = "k" .. i }))
        io.write("A ", i, " ", d:stats().spool.compactions, "\n")
        if i %% 20 == 0 then io.flush() d:poll(0) end
      end
      io.write("all\n") io.flush()
      while true do d:poll(0.05) end
    ]]):format(path, n, code))
    local accepted, compactions = 0, 0
    for line in p.pipe:lines() do
      local i, c = line:match("^A (%d+) (%d+)")
      if i then
        accepted, compactions = tonumber(i), tonumber(c)
        if compactions >= 1 and accepted >= n / 2 then break end
      elseif line == "all" then
        break
      end
    end
    background.kill(p)
    assert.is_true(compactions >= 1, "no compaction before the kill")
    local reports, on_error = collector()
    local d = assert(postback.dispatcher { allow_private = true, spool = path, concurrency = 32, on_error = on_error })
    assert.is_true(d.recovered > 0)
    assert.is_true(d:wait(60))
    d:close()
    local seen = {}
    for _, id in ipairs(received_ids()) do seen[id] = true end
    for i = 1, accepted do assert.is_true(seen["k" .. i], "lost postback k" .. i) end
    for _, r in ipairs(reports) do assert.equal("torn", r.reason) end -- at most the line being written
  end)

  it("100,000 postbacks, never more than 2,000 owed: all delivered, the spool never over 4 MiB", function()
    local n = testenv.slow and 10000 or 100000
    local ngx = nginxproc.start { locations = "location / { return 204; }" }
    finally(function() ngx:stop() end)
    local url = ngx.url .. "/pb?click_id={click_id}&payout=1.5&sub=spring%20sale"
    local d = assert(postback.dispatcher { allow_private = true, spool = path, concurrency = 64 })
    local fired, peak_owed, peak_file = 0, 0, 0
    local f = assert(io.open(path, "rb"))
    while fired < n or d:pending() > 0 do
      while d:pending() < 2000 and fired < n do
        fired = fired + 1
        assert(d:fire(url, { click_id = fired }))
      end
      local owed = d:stats().spool.owed
      if owed > peak_owed then peak_owed = owed end
      d:poll(0.01)
      -- the file at this path (compaction replaces it)
      f:close()
      f = assert(io.open(path, "rb"))
      local size = f:seek("end")
      if size > peak_file then peak_file = size end
    end
    f:close()
    local st = d:stats()
    d:close()
    assert.equal(n, st.delivered)
    assert.equal(0, st.failed)
    assert.equal(0, st.spool.owed)
    assert.is_true(peak_owed <= 2000)
    assert.is_true(st.spool.peak_bytes <= 4 * 1024 * 1024, "peak " .. st.spool.peak_bytes)
    assert.is_true(peak_file <= 4 * 1024 * 1024, "peak file " .. peak_file)
    assert.is_true(st.spool.compactions > n / 5000)
    -- reopening reads what is owed, not what was ever sent
    local t0 = core.now()
    local sp = assert(spool.open(path))
    local dt = core.now() - t0
    assert.is_true(sp:stats().bytes < 64 * 1024)
    assert.is_true(testenv.slow or dt < 0.1, "reopen took " .. dt)
    sp:close()
  end)
end)

-- Compaction writes <path>.tmp and renames it over the spool: when it cannot,
-- the spool stays as it was and says so.
describe("the spool's compaction when it cannot be done", function()
  local dir, path

  before_each(function()
    dir = tmpdir()
    path = dir .. "/c.spool"
  end)

  after_each(function() rmrf(dir) end)

  it("on a full 64 KiB tmpfs: reported as compaction, the file byte for byte as it was, done once there is room", function()
    local mnt, why = small_tmpfs()
    if not mnt then return pending(why) end
    local sp
    finally(function()
      if sp then sp:close() end -- a spool open on it keeps it busy
      unmount(mnt)
    end)
    local sp_path = mnt .. "/c.spool"
    local reports, on_error = collector()
    sp = assert(spool.open(sp_path, { compact_after = 5, on_error = on_error }))
    -- 20 records of 1 KiB, the first 10 done: a compaction is due and
    -- needs 10 KiB for what is owed
    local body = string.rep("x", 1000)
    for i = 1, 20 do assert.equal(i, sp:add { url = "http://a/" .. i, body = body }) end
    for id = 1, 10 do assert.is_true(sp:done(id)) end
    local filler = assert(io.open(mnt .. "/filler", "wb"))
    local kib = string.rep("\0", 1024)
    for _ = 1, 128 do
      if not (filler:write(kib) and filler:flush()) then break end
    end
    filler:close()
    local before = read(sp_path)
    assert.is_true(sp:sync()) -- the records are written: only the compaction failed
    assert.equal(1, #reports)
    local r = reports[1]
    assert.equal("spool", r.kind)
    assert.equal("compaction", r.code)
    assert.equal(ENOSPC, r.errno)
    assert.equal(sp_path, r.path)
    assert.truthy(tostring(r):find("the spool is as it was", 1, true), tostring(r))
    assert.equal(before, read(sp_path))
    assert.is_false(exists(sp_path .. ".tmp"))
    local st = sp:stats()
    assert.equal(10, st.owed)
    assert.equal(0, st.compactions)
    assert.equal(1, st.compaction_failures)
    assert.same({ 11, 12, 13, 14, 15, 16, 17, 18, 19, 20 }, owed_ids(sp))
    -- room again: the next compaction that is due is done
    os.remove(mnt .. "/filler")
    for id = 11, 15 do assert.is_true(sp:done(id)) end
    assert.is_true(sp:sync())
    assert.equal(1, #reports)
    st = sp:stats()
    assert.equal(1, st.compactions)
    assert.equal(5, st.owed)
    assert.is_true(#read(sp_path) < #before / 2, #read(sp_path) .. " bytes")
    assert.is_false(exists(sp_path .. ".tmp"))
    sp:close()
    sp = assert(spool.open(sp_path, { on_error = on_error }))
    assert.same({ 16, 17, 18, 19, 20 }, owed_ids(sp))
    assert.equal(1, #reports)
  end)

  it("a .corrupt that cannot be written: reported as corrupt_file, the damaged line stays, compaction off", function()
    local sp = assert(spool.open(path))
    for i = 1, 5 do sp:add { url = "http://a/" .. i } end
    sp:close()
    -- line 3 damaged (a byte of its URL changed: the checksum no longer matches)
    local text = read(path)
    local s = 1
    for _ = 1, 2 do s = text:find("\n", s, true) + 1 end
    local u = text:find("http", s, true)
    text = text:sub(1, u - 1) .. "H" .. text:sub(u + 1)
    write(path, text)
    assert(run("mkdir " .. quote(path .. ".corrupt")))
    local reports, on_error = collector()
    sp = assert(spool.open(path, { compact_after = 1, on_error = on_error }))
    local codes = {}
    for _, r in ipairs(reports) do codes[#codes + 1] = r.code end
    assert.same({ "damaged", "corrupt_file" }, codes)
    assert.equal("checksum", reports[1].reason)
    assert.equal(3, reports[1].line)
    assert.is_false(reports[1].saved)
    assert.truthy(tostring(reports[1]):find("kept in the spool", 1, true), tostring(reports[1]))
    assert.truthy(tostring(reports[2]):find("compaction is off", 1, true), tostring(reports[2]))
    assert.same({ 1, 2, 4, 5 }, owed_ids(sp))
    assert.equal(text, read(path)) -- the damaged line is still there
    local st = sp:stats()
    assert.is_true(st.compaction_off)
    assert.equal(0, st.compactions)
    -- no compaction while it runs, though one is due
    assert.is_true(sp:done(1))
    assert.is_true(sp:done(2))
    assert.is_true(sp:sync())
    local ok, err = sp:compact()
    assert.is_nil(ok)
    assert.equal("spool", err.kind)
    assert.truthy(tostring(err):find("compaction is off", 1, true), tostring(err))
    assert.equal(0, sp:stats().compactions)
    assert.truthy(read(path):find(text, 1, true), "the damaged line left the spool")
    assert.equal(2, #reports)
    sp:close()
    -- opened again once .corrupt can be written: moved there, compacted away
    assert(run("rmdir " .. quote(path .. ".corrupt")))
    sp = assert(spool.open(path, { on_error = on_error }))
    assert.equal(3, #reports)
    assert.equal("damaged", reports[3].code)
    assert.is_true(reports[3].saved)
    assert.same({ 4, 5 }, owed_ids(sp))
    assert.is_false(sp:stats().compaction_off)
    assert.equal(1, sp:stats().compactions)
    sp:close()
    assert.falsy(read(path):find("Http", 1, true))
    assert.truthy(read(path .. ".corrupt"):find("Http://a/3", 1, true))
  end)
end)
