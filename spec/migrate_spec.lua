-- Bulk migrations against the mock: every ready transform, dry runs, and a
-- journaled run killed with kill -9 at random moments, then resumed.
local postback = require "postback"
local core = require "postback.core"
local child = require "child"
local mockproc = require "mockproc"
local testenv = require "testenv"
local workerproc = require "workerproc"

local T = postback.transforms

describe("migrate", function()
  local mock, c
  local N = testenv.slow and 300 or 5000

  setup(function()
    mock = mockproc.start {}
  end)

  teardown(function()
    if c then c:close() end
    mock:stop()
  end)

  before_each(function()
    mock:reset()
    c = assert(postback.client(mock:client_opts()))
  end)

  -- the writes at the mock: total, and the most of any one postback
  local function writes()
    local _, total, max = mock:writes()
    return total, max
  end

  describe("ready transforms", function()
    it("moves every postback to a new tracking host", function()
      mock:seed { count = N, offer_id = 2, type = 2, code = "https://old.example/pb?c={click_id}&s={aff_sub1}" }
      local report = assert(postback.migrate { client = c, transform = T.replace_host("old.example", "new.example"),
                                                concurrency = 16 })
      assert.equal(N, report.scanned)
      assert.equal(N, report.changed)
      assert.equal(0, report.failed)
      local total, max = writes()
      assert.equal(N, total)
      assert.equal(1, max)
      for pb in c:each { limit = 1000 } do
        assert.equal("https://new.example/pb?c={click_id}&s={aff_sub1}", pb.code)
      end
      -- a second run finds nothing to do
      report = assert(postback.migrate { client = c, transform = T.replace_host("old.example", "new.example") })
      assert.equal(0, report.changed)
      assert.equal(N, report.skipped)
    end)

    it("renames a macro on every postback", function()
      mock:seed { count = N, offer_id = 0, type = 2, code = "https://t.example/pb?c={click_id}&s={aff_sub}" }
      local report = assert(postback.migrate { client = c, transform = T.rename_macro("aff_sub", "aff_sub1"),
                                                concurrency = 16 })
      assert.equal(N, report.changed)
      for pb in c:each { limit = 1000 } do assert.equal("https://t.example/pb?c={click_id}&s={aff_sub1}", pb.code) end
      local _, max = writes()
      assert.equal(1, max)
    end)

    it("sets, adds and removes query parameters on every postback", function()
      mock:seed { count = N, offer_id = 0, type = 2, code = "https://t.example/pb?c={click_id}&old=1" }
      local report = assert(postback.migrate { client = c, concurrency = 16, transform = T.chain(
        T.set_param("src", "ol"), T.remove_param("old"), T.add_param("c", "{ignored}"), T.add_param("v", "2")) })
      assert.equal(N, report.changed)
      for pb in c:each { limit = 1000 } do
        assert.equal("https://t.example/pb?c={click_id}&src=ol&v=2", pb.code)
      end
    end)

    it("changes the type where the offer's protocol allows it, and refuses elsewhere", function()
      local half = math.floor(N / 2)
      mock:seed { count = half, offer_id = 3, type = 2 }
      mock:seed { count = N - half, offer_id = 2, type = 2 }
      local report = assert(postback.migrate { client = c, transform = T.set_type(1), concurrency = 16 })
      assert.equal(N, report.scanned)
      assert.equal(half, report.changed)
      assert.equal(N - half, report.failed)
      assert.equal("type_not_allowed", report.errors[1].error.errors[1].code)
      for pb in c:each { limit = 1000 } do
        assert.equal(pb.offer_id == 3 and 1 or 2, pb.type)
      end
      assert.equal(half, (writes())) -- seeding is not a write; the refused cost no request
    end)

    it("sets the status with PATCH", function()
      mock:seed { count = N, status = "approved" }
      local report = assert(postback.migrate { client = c, transform = T.set_status("rejected"), concurrency = 16 })
      assert.equal(N, report.changed)
      local patches = 0
      for _, r in ipairs(mock:requests()) do
        if r.method == "PATCH" then
          patches = patches + 1
          assert.equal("status=rejected", r.query)
        end
      end
      assert.equal(N, patches)
    end)
  end)

  it("reports transform errors and bad changes per record, and keeps going", function()
    mock:seed { count = 6, offer_id = 0, type = 2 }
    local report = assert(postback.migrate { client = c, transform = function(pb)
      if pb.id == 2 then return nil, "no thanks" end
      if pb.id == 3 then return { code = "not a url" } end
      if pb.id == 4 then return { code = pb.code .. "&x={clickid}" } end
      return { code = pb.code .. "&v=2" }
    end })
    assert.equal(6, report.scanned)
    assert.equal(3, report.changed)
    assert.equal(3, report.failed)
    local failed = {}
    for _, e in ipairs(report.errors) do failed[e.id] = e.error.kind end
    assert.same({ [2] = "validation", [3] = "validation", [4] = "validation" }, failed)
  end)

  it("dry run prints old -> new and writes nothing", function()
    mock:seed { count = 5, code = "https://old.example/pb" }
    local lines = {}
    local out = { write = function(_, ...) lines[#lines + 1] = table.concat({ ... }) end }
    local report = assert(postback.migrate { client = c, dry_run = true, out = out,
                                              transform = T.replace_host("old.example", "new.example") })
    assert.equal(5, report.changed)
    assert.equal(0, (writes()))
    assert.equal(5, #lines)
    assert.matches("code: https://old.example/pb %-> https://new.example/pb", lines[1])
  end)

  it("takes a JSONL file or an iterator as the source", function()
    mock:seed { count = 3, code = "https://a.example/x" }
    local file = os.tmpname()
    local f = assert(io.open(file, "w"))
    for pb in c:each {} do f:write(require("cjson").encode(pb), "\n") end
    f:close()
    local report = assert(postback.migrate { client = c, source = file, transform = T.set_param("k", "v") })
    assert.equal(3, report.changed)
    os.remove(file)
    local list = { { id = 1, code = "https://a.example/x?k=v", offer_id = 0, type = 2 } }
    local i = 0
    report = assert(postback.migrate { client = c, source = function() i = i + 1 return list[i] end,
                                        transform = T.set_param("k", "w") })
    assert.equal(1, report.changed)
    assert.equal("https://a.example/x?k=w", assert(c:get(1)).code)
  end)

  it("raises for misuse", function()
    mock:seed { count = 1 }
    assert.has_error(function() postback.migrate { client = c } end)
    assert.has_error(function() postback.migrate("x") end)
    assert.has_error(function() postback.migrate { client = c, transform = function() return { offer_id = 1 } end } end)
  end)

  describe("journal", function()
    local journal

    before_each(function()
      journal = os.tmpname()
      os.remove(journal)
    end)

    after_each(function() os.remove(journal) end)

    it("applies every change exactly once across kill -9 at random moments", function()
      local n = testenv.slow and 200 or 1000
      mock:seed { count = n, offer_id = 0, type = 2, code = "https://old.example/pb?c={click_id}" }
      -- a non-idempotent transform: each run would append again without the journal
      local code = ([[
        local postback = require "postback"
        local c = assert(postback.client { network = %q, api_key = %q, base_url = %q })
        local report = assert(postback.migrate { client = c, journal = %q, concurrency = 4,
          transform = function(pb) return { code = pb.code:gsub("old%%.example", "new.example") .. "&m=1" } end })
        io.write("done ", report.changed, "\n")
      ]]):format(mock.network, mock.api_key, mock.url, journal)
      -- paced (4 at a time, 20 ms each; 50 ms under valgrind, where each
      -- poll below is slower) so that no run can finish between two polls
      local delay = testenv.slow and 0.05 or 0.02
      mock:control("POST", "/_mock/faults", { fault = "slow", delay = delay, times = 1000000, match = "/v1/" })
      -- each run killed once the writes reach a random point (5% to 85% of
      -- n, rising), while it still runs
      math.randomseed(20261125)
      local at = {}
      for k = 1, 12 do at[k] = math.floor(n * (0.05 + 0.8 * math.random())) end
      table.sort(at)
      local kills = 0
      for k = 1, 12 do
        local p = child.spawn(code)
        local deadline, alive = core.now() + 30
        repeat
          core.sleep(0.02)
          alive = workerproc.alive(p.pid)
        until not alive or writes() >= at[k] or core.now() > deadline
        child.kill(p)
        assert(alive, ("run %d ended before its kill, after %d writes"):format(k, (writes())))
        -- what the dead run sent is settled at the server before the next
        -- run reads (a server may apply a dead client's last request after
        -- a new run has read the record: no journal can see that)
        local before
        repeat
          before = writes()
          core.sleep(4 * delay)
        until writes() == before
        kills = kills + 1
      end
      mock:control("DELETE", "/_mock/faults")
      local last = child.wait(child.spawn(code))
      assert.matches("^done", last)
      assert.equal(12, kills)
      for pb in c:each { limit = 1000 } do
        assert.equal("https://new.example/pb?c={click_id}&m=1", pb.code)
      end
      local total, max = writes()
      assert.equal(n, total)
      assert.equal(1, max)
    end)

    it("survives a torn last line", function()
      mock:seed { count = 4, offer_id = 0, type = 2 }
      assert(postback.migrate { client = c, journal = journal, transform = T.set_param("a", "1") })
      local f = assert(io.open(journal, "ab"))
      f:write("deadbeef {\"op\":\"intent\",\"id\":1")
      f:close()
      local report = assert(postback.migrate { client = c, journal = journal, transform = T.set_param("a", "1") })
      assert.equal(0, report.changed)
      assert.equal(4, report.skipped)
    end)
  end)
end)
