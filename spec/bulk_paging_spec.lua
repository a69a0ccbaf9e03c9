-- Bulk jobs reach every record while the result set changes under them:
-- key paging (sort +id, filters[id][GREATER_THAN] = the last id seen) in
-- c:each, migrate, the command line and the documented recipes. Real
-- processes against the mock, whose filters are applied by the server.
--
--   * a migration filtered on the field it changes (code CONTAINS the old
--     host, replace_host): every record reached, each written exactly once
--     (the mock's /_mock/stats `writes` per id), 0 left on the old host;
--     through postback.migrate, `postback migrate` and examples/move_domain.lua;
--   * records created and deleted while an `each` runs, by the loop itself
--     and by a second process: what existed at the start and was not
--     deleted is seen exactly once, nothing twice;
--   * such a migration killed with kill -9 and resumed with its journal,
--     and the README's migration recipe the same way;
--   * a server that ignores the key cursor (the same ids on every page, or
--     ids in descending order): a decode error within two pages.
local postback = require "postback"
local core = require "postback.core"
local cjson = require("cjson.safe")
local child = require "child"
local hostile = require "hostile"
local mockproc = require "mockproc"
local testenv = require "testenv"
local workerproc = require "workerproc"
local F = require "fixtures"

local ROOT = mockproc.root()
local OLD, NEW = "old-tracker.example", "new-tracker.example"
local OLD_CODE = "https://" .. OLD .. "/pb?c={click_id}&s={aff_sub1}"
local NEW_CODE = "https://" .. NEW .. "/pb?c={click_id}&s={aff_sub1}"
local OTHER_CODE = "https://other.example/pb?c={click_id}&s={aff_sub1}"
local N = testenv.slow and 500 or 5000

local q = child.quote

local write_file, exit_code = F.writefile, F.exit_code

-- this process's module paths, for children that run in another directory
local LUA_PATH, LUA_CPATH = child.absolute(package.path), child.absolute(package.cpath)

-- Starts a Lua chunk as a real process (in dir, with args): {pid, pipe}
-- (stdout and stderr come through the pipe).
local function spawn(code, args, dir)
  return child.spawn(code, { args = args, dir = dir, merge_stderr = true })
end

-- Runs a Lua chunk to its end: its output.
local function run_script(code, args, dir)
  return child.wait(spawn(code, args, dir))
end

-- Writes per id at the mock (creates, updates, status changes, deletes).
local function writes(mock) return mock:writes() end

-- Every postback at the mock, read by offset pages (nothing changes now).
local function all_postbacks(c)
  local out, page = {}, 1
  while true do
    local data = assert(c:list { page = page, limit = 1000, sort = "+id" })
    for _, pb in ipairs(data.rowset) do out[#out + 1] = pb end
    if page >= data.totalPages then break end
    page = page + 1
  end
  return out
end

local function left_on_old_host(c)
  return assert(c:list { limit = 1, filters = { code = { CONTAINS = OLD } } }).totalRows
end

-- Asserts the end state of a host move: every id in first..last moved and
-- written exactly once, the others untouched.
local function assert_moved(mock, c, first, last, new_code)
  assert.equal(0, left_on_old_host(c), "postbacks left on the old host")
  local by_id = writes(mock)
  local moved, unwritten, twice, strays = 0, {}, {}, {}
  for _, pb in ipairs(all_postbacks(c)) do
    local id = pb.id
    if id >= first and id <= last then
      assert.equal(new_code, pb.code)
      moved = moved + 1
      local n = by_id[id] or 0
      if n == 0 then unwritten[#unwritten + 1] = id end
      if n > 1 then twice[#twice + 1] = id .. " (" .. n .. " writes)" end
    else
      assert.equal(OTHER_CODE, pb.code)
      if by_id[id] then strays[#strays + 1] = id end
    end
  end
  assert.equal(last - first + 1, moved)
  assert.equal(0, #unwritten, "never written: " .. table.concat(unwritten, ", ", 1, math.min(#unwritten, 20)))
  assert.equal(0, #twice, "written more than once: " .. table.concat(twice, ", ", 1, math.min(#twice, 20)))
  assert.equal(0, #strays, "records outside the filter written: " .. table.concat(strays, ", "))
end

-- The list requests the mock saw: their limits and whether they paged by key.
local function list_requests(mock)
  local out = {}
  for _, r in ipairs(mock:requests()) do
    if r.method == "GET" and r.path == "/v1/affiliate_postbacks" then out[#out + 1] = r.query end
  end
  return out
end

-- Kills the process when at least `at` records were written; returns the
-- writes seen then. Fails when the run ended (or never got there) first.
-- Returns once what the dead run sent is settled at the server.
local function kill_at(mock, p, at, limit)
  local deadline = core.now() + (limit or 60)
  local total, alive
  repeat
    core.sleep(0.02)
    local _, t = writes(mock)
    total, alive = t, workerproc.alive(p.pid)
  until total >= at or not alive or core.now() > deadline
  local out = child.kill(p)
  assert(alive, ("the run ended before the kill, after %d writes: %s"):format(total, out))
  assert(total >= at, ("only %d writes after %d s: %s"):format(total, limit or 60, out))
  local before, now
  repeat
    before = select(2, writes(mock))
    core.sleep(0.2)
    now = select(2, writes(mock))
  until now == before
  return total, out
end

describe("bulk jobs page by key", function()
  local mock, c, tmp

  setup(function()
    mock = mockproc.start { network = "bulk", api_key = "bulk-key" }
    tmp = F.tmpdir()
  end)

  teardown(function()
    if c then c:close() end
    mock:stop()
    os.execute("rm -rf " .. q(tmp))
  end)

  before_each(function()
    mock:reset()
    if c then c:close() end
    c = assert(postback.client(mock:client_opts()))
  end)

  -- N postbacks on the old host (ids 1..N), then 50 elsewhere.
  local function seed_hosts(n)
    mock:seed { count = n, offer_id = 0, type = 2, code = OLD_CODE }
    mock:seed { count = 50, offer_id = 0, type = 2, code = OTHER_CODE }
  end

  describe("a migration filtered on the field it changes", function()
    it(("migrate: %d postbacks, pages of 100, every one moved and written once"):format(N), function()
      seed_hosts(N)
      local report = assert(postback.migrate {
        client = c, concurrency = 16,
        query = { filters = { code = { CONTAINS = OLD } }, limit = 100 },
        transform = postback.transforms.replace_host(OLD, NEW),
      })
      assert.equal(N, report.scanned)
      assert.equal(N, report.changed)
      assert.equal(0, report.failed)
      local lists = list_requests(mock)
      for _, query in ipairs(lists) do
        assert.matches("limit=100", query, 1, true)
        assert.matches("sort=%2Bid", query, 1, true)
      end
      -- one page a 100 records, plus the empty page that ends the run (at most)
      assert.is_true(#lists <= N / 100 + 2, ("%d list requests for %d records"):format(#lists, N))
      assert_moved(mock, c, 1, N, NEW_CODE)
    end)

    it(("postback migrate --filter code:CONTAINS=... --replace-host: %d postbacks"):format(N), function()
      seed_hosts(N)
      local out, err = tmp .. "/out", tmp .. "/err"
      local cmd = ("cd %s && env LUA_PATH=%s LUA_CPATH=%s OFFERSLOOK_NETWORK=bulk OFFERSLOOK_API_KEY=bulk-key "
        .. "OFFERSLOOK_BASE_URL=%s %s bin/postback migrate --filter code:CONTAINS=%s --replace-host %s=%s "
        .. "--concurrency 16 >%s 2>%s </dev/null"):format(q(ROOT), q(LUA_PATH), q(LUA_CPATH), mock.url,
        testenv.lua, OLD, OLD, NEW, q(out), q(err))
      local code = exit_code(os.execute(cmd))
      local f = assert(io.open(out))
      local stdout = f:read("*a")
      f:close()
      f = assert(io.open(err))
      local stderr = f:read("*a")
      f:close()
      assert.equal(0, code, stdout .. stderr)
      local summary = cjson.decode(stdout:match("[^\n]+") or "")
      assert.is_table(summary, "not a JSON summary: " .. stdout)
      assert.equal(N, summary.scanned)
      assert.equal(N, summary.changed)
      assert.equal(0, summary.failed)
      assert_moved(mock, c, 1, N, NEW_CODE)
    end)

    it("examples/move_domain.lua, as the cookbook runs it (dry run, then --apply)", function()
      local n = testenv.slow and 300 or 3000
      seed_hosts(n)
      local env = ("env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_PATH_5_3 -u LUA_CPATH_5_3 "
        .. "OFFERSLOOK_NETWORK=bulk OFFERSLOOK_API_KEY=bulk-key OFFERSLOOK_BASE_URL=%s"):format(mock.url)
      local function example(extra)
        local p = assert(io.popen(("cd %s && %s %s examples/move_domain.lua %s %s%s 2>&1"):format(
          q(ROOT), env, testenv.lua, OLD, NEW, extra)))
        local out = p:read("*a")
        local ok, _, code = p:close()
        if type(ok) == "number" then code = ok end
        return out, ok == true or code == 0
      end
      local out, ok = example("")
      assert.is_true(ok, out)
      assert.matches(("%d postbacks read, %d would move, 0 unchanged, 0 failed"):format(n, n), out, 1, true)
      assert.equal(0, (select(2, writes(mock))))
      out, ok = example(" --apply")
      assert.is_true(ok, out)
      assert.matches(("%d postbacks read, %d moved, 0 unchanged, 0 failed"):format(n, n), out, 1, true)
      assert_moved(mock, c, 1, n, NEW_CODE)
    end)
  end)

  describe("creates and deletes while each runs", function()
    it("changes made by the loop itself: nothing skipped, nothing twice", function()
      local n = testenv.slow and 600 or 3000
      mock:seed { count = n, offer_id = 0, type = 2, code = OLD_CODE } -- ids 1..n
      local other = assert(postback.client(mock:client_opts()))
      local seen, twice, deleted, created = {}, {}, {}, 0
      local start_ids = n
      local count = 0
      for pb in c:each { limit = 100 } do
        count = count + 1
        if seen[pb.id] then twice[#twice + 1] = pb.id end
        seen[pb.id] = true
        if count % 50 == 0 then
          -- delete one behind, one far ahead (past the page in hand), and
          -- one just ahead; create three (new ids, after the others)
          for _, id in ipairs { pb.id - 10, pb.id + 250, pb.id + 3 } do
            if id >= 1 and id <= start_ids and not deleted[id] then
              if other:delete(id) then deleted[id] = true end
            end
          end
          mock:seed { count = 3, offer_id = 0, type = 2, code = OTHER_CODE }
          created = created + 3
        end
      end
      other:close()
      assert.equal(0, #twice, "seen twice: " .. table.concat(twice, ", ", 1, math.min(#twice, 20)))
      local missed = {}
      for id = 1, start_ids do
        if not deleted[id] and not seen[id] then missed[#missed + 1] = id end
      end
      assert.equal(0, #missed, ("%d records that were never deleted were skipped: %s"):format(
        #missed, table.concat(missed, ", ", 1, math.min(#missed, 20))))
      assert.is_true(next(deleted) ~= nil and created > 0)
    end)

    it("records leaving and entering the filter during the iteration", function()
      local n = testenv.slow and 600 or 3000
      mock:seed { count = n, offer_id = 0, type = 2, code = OLD_CODE } -- ids 1..n
      local other = assert(postback.client(mock:client_opts()))
      local seen, twice, count = {}, {}, 0
      local entered = {}
      for pb in c:each { limit = 100, filters = { code = { CONTAINS = OLD } } } do
        count = count + 1
        if seen[pb.id] then twice[#twice + 1] = pb.id end
        seen[pb.id] = true
        -- the record leaves the filter as it is read (a migration does that)
        assert(other:update(pb.id, { code = NEW_CODE }))
        if count % 100 == 0 then
          -- a record far behind comes back into the filter: seen at most once
          local back = pb.id - 50
          if back >= 1 then
            assert(other:update(back, { code = OLD_CODE }))
            entered[#entered + 1] = back
          end
        end
      end
      other:close()
      assert.equal(0, #twice, "seen twice: " .. table.concat(twice, ", ", 1, math.min(#twice, 20)))
      for id = 1, n do assert(seen[id], "skipped record " .. id) end
      assert.equal(n, count)
      assert.is_true(#entered > 0)
    end)

    it("a second process creating and deleting records during the iteration", function()
      local n = testenv.slow and 600 or 3000
      mock:seed { count = n, offer_id = 0, type = 2, code = OLD_CODE } -- ids 1..n
      -- list pages take 30 ms each, so the other process has time to act
      mock:fault { fault = "slow", delay = 0.03, method = "GET", match = "/v1/affiliate_postbacks?", times = 1000000 }
      local stop = tmp .. "/stop"
      os.remove(stop)
      local churn = [[
        local base, n, stop = arg[1], tonumber(arg[2]), arg[3]
        local postback = require "postback"
        local core = require "postback.core"
        local c = assert(postback.client { network = "bulk", api_key = "bulk-key", base_url = base })
        math.randomseed(20261207)
        io.write("ready\n")
        io.stdout:flush()
        while not io.open(stop) do
          local id = math.random(1, n)
          if c:delete(id) then io.write("deleted ", id, "\n") end
          local pb = c:create { offer_id = 0, affiliate_id = 1, type = 2, code = "https://new.example/c" }
          if pb then io.write("created ", pb.id, "\n") end
          io.stdout:flush()
          core.sleep(0.003)
        end
        io.write("stopped\n")
      ]]
      local p = spawn(churn, { mock.url, tostring(n), stop })
      finally(function() child.kill(p) end) -- ends it when an assertion fails first
      assert.equal("ready", p.pipe:read("*l"))
      local seen, twice, count = {}, {}, 0
      local t0 = core.now()
      for pb in c:each { limit = 100 } do
        count = count + 1
        if seen[pb.id] then twice[#twice + 1] = pb.id end
        seen[pb.id] = true
      end
      local seconds = core.now() - t0
      write_file(stop, "")
      local out = child.wait(p)
      mock:control("DELETE", "/_mock/faults")
      assert.matches("stopped\n$", out)
      local deleted, created = {}, {}
      local ndeleted, ncreated = 0, 0
      for what, id in out:gmatch("(%a+) (%d+)\n") do
        if what == "deleted" then deleted[tonumber(id)] = true ndeleted = ndeleted + 1 end
        if what == "created" then created[tonumber(id)] = true ncreated = ncreated + 1 end
      end
      assert.is_true(ndeleted >= 10 and ncreated >= 10,
        ("the other process did little during the %.2f s iteration: %d deletes, %d creates"):format(
          seconds, ndeleted, ncreated))
      assert.equal(0, #twice, "seen twice: " .. table.concat(twice, ", ", 1, math.min(#twice, 20)))
      local missed = {}
      for id = 1, n do
        if not deleted[id] and not seen[id] then missed[#missed + 1] = id end
      end
      assert.equal(0, #missed, ("%d records that were never deleted were skipped: %s"):format(
        #missed, table.concat(missed, ", ", 1, math.min(#missed, 20))))
      for id in pairs(seen) do
        assert(id <= n or created[id], "seen a record that never existed: " .. id)
      end
    end)
  end)

  describe("kill -9 and resume", function()
    it(("a journaled migration filtered on the field it changes (%d postbacks, killed twice)"):format(N), function()
      seed_hosts(N)
      local journal = tmp .. "/move.journal"
      os.remove(journal)
      local mig = ([[
        local postback = require "postback"
        local c = assert(postback.client { network = "bulk", api_key = "bulk-key", base_url = arg[1] })
        local report = assert(postback.migrate {
          client = c, journal = arg[2], concurrency = 16,
          query = { filters = { code = { CONTAINS = %q } }, limit = 100 },
          transform = postback.transforms.replace_host(%q, %q),
        })
        io.write("done ", report.scanned, " ", report.changed, " ", report.skipped, " ", report.failed, "\n")
      ]]):format(OLD, OLD, NEW)
      -- each write takes a few ms, so the kills land mid-run
      mock:fault { fault = "slow", delay = 0.005, method = "PUT", times = 1000000 }
      local at1 = kill_at(mock, spawn(mig, { mock.url, journal }), math.floor(N / 4))
      local at2 = kill_at(mock, spawn(mig, { mock.url, journal }), math.floor(N * 0.6))
      assert.is_true(at1 < N and at2 < N, ("a run ended before its kill (%d, %d writes)"):format(at1, at2))
      mock:control("DELETE", "/_mock/faults")
      local out = run_script(mig, { mock.url, journal })
      local scanned, changed, _, failed = out:match("done (%d+) (%d+) (%d+) (%d+)")
      assert(scanned, "the resumed run did not finish: " .. out)
      assert.equal(0, tonumber(failed), out)
      assert.is_true(tonumber(changed) < N, "the resumed run redid everything: " .. out)
      assert_moved(mock, c, 1, N, NEW_CODE)
    end)

    it("the README's migration recipe: 1,200 postbacks, pages of 100, kill -9 mid-run, resume", function()
      local n = testenv.slow and 400 or 1200
      -- the recipe as README.md shows it
      local f = assert(io.open(ROOT .. "/README.md"))
      local readme = f:read("*a")
      f:close()
      local section = assert(readme:match("\n### Migrations\n(.-)\n## "), "README has no Migrations section")
      local recipe = assert(section:match("```lua\n(.-)```"), "the Migrations section has no Lua example")
      assert.matches('CONTAINS = "' .. OLD .. '"', recipe, 1, true)
      assert.matches('replace_host("' .. OLD .. '", "' .. NEW .. '")', recipe, 1, true)
      local journal = recipe:match('journal = "([^"]+)"')
      assert(journal, "the recipe has no journal")
      -- the recipe needs `postback` and a client `c`; it runs in its own directory
      local dir = tmp .. "/recipe"
      assert(os.execute("mkdir -p " .. q(dir)))
      local recipe_code = ([[
        local postback = require "postback"
        local c = assert(postback.client { network = "bulk", api_key = "bulk-key", base_url = %q })
      ]]):format(mock.url) .. recipe
      -- {aff_sub} is not a documented macro: the recipe's rename makes these valid
      mock:seed { count = n, offer_id = 0, type = 2, code = "https://" .. OLD .. "/pb?c={click_id}&s={aff_sub}" }
      mock:seed { count = 50, offer_id = 0, type = 2, code = OTHER_CODE }
      mock:fault { fault = "slow", delay = 0.01, method = "PUT", times = 1000000 }
      local at = kill_at(mock, spawn(recipe_code, {}, dir), math.floor(n / 3))
      assert.is_true(at < n, "the run ended before the kill")
      mock:control("DELETE", "/_mock/faults")
      local out = run_script(recipe_code, {}, dir)
      local changed, failed = out:match("^(%d+)%s+(%d+)\n")
      assert(changed, "the resumed recipe did not finish: " .. out)
      assert.equal(0, tonumber(failed), out)
      local lists = list_requests(mock)
      assert.is_true(#lists >= 2)
      for _, query in ipairs(lists) do assert.matches("limit=100", query, 1, true) end
      -- the recipe also renames {aff_sub} to {aff_sub1}
      assert_moved(mock, c, 1, n, "https://" .. NEW .. "/pb?c={click_id}&s={aff_sub1}")
      os.execute("rm -rf " .. q(dir))
    end)
  end)

  describe("a server that ignores the key cursor", function()
    local server

    setup(function() server = hostile.start() end)
    teardown(function() if server then server:stop() end end)

    -- totalRows 5, pages of 2: ids 1, 2 on every page, or each page's ids
    -- from high to low
    for _, variant in ipairs { "ignore-after", "desc" } do
      it(("ids out of order (%s) are a decode error within two pages"):format(variant), function()
        local r = child.run([[
          local postback = require "postback"
          local c = assert(postback.client { network = "pages", api_key = "pages-key", base_url = ...,
            timeout = 5, retries = 0 })
          local n = 0
          local ok, err = pcall(function()
            for _ in c:each { limit = 2 } do
              n = n + 1
              if n >= 1000 then error("runaway: 1000 rows", 0) end
            end
          end)
          return { n = n, ok = ok, err = err, err_type = type(err) }
        ]], { args = { server.url .. "/list/" .. variant }, limit = 10 })
        assert(not r.timed_out and r.raised == nil, child.describe(r))
        local v = r.value
        assert(not v.ok, ("the iteration ended without error after %d rows"):format(v.n))
        assert.equal("table", v.err_type, tostring(v.err))
        assert.equal("decode", v.err.kind, v.err.text)
        assert.matches("out of id order", v.err.message, 1, true)
        local pages = server:count("/list/" .. variant .. "/v1/affiliate_postbacks")
        assert.is_true(pages <= 2, pages .. " pages read")
        assert.is_true(v.n <= 2, v.n .. " rows read")
      end)
    end
  end)
end)
