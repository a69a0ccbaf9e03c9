-- One semantics for one call: c:batch runs every op exactly as the single
-- call does (one request and retry path). Each op (create, get, update,
-- set_status, delete) runs both ways under every fault of the fault matrix
-- (spec/support/fault_matrix.lua), and the two are compared: the outcome
-- (ok, or the error's kind and status), the attempts the error reports, the
-- attempts counted at the mock, what the mock wrote and created. Both are
-- also held to the matrix itself. Then the rate limit, the DELETE whose
-- first answer was lost and the POST that may have reached the server, with
-- many ops in one batch.
local postback = require "postback"
local core = require "postback.core"
local matrix = require "fault_matrix"
local mockproc = require "mockproc"
local testenv = require "testenv"

local unpack = table.unpack or unpack

local CODE = "https://t.example/pb?c={click_id}"

-- Each op on postback 1 (2 exists too: the batch's companion reads it).
local OPS = {
  { name = "create", method = "POST", path = "/v1/affiliate_postbacks", post = true,
    args = { { offer_id = 0, affiliate_id = 1, type = 2, code = CODE } } },
  { name = "get", method = "GET", path = "/v1/affiliate_postbacks/1", args = { 1 } },
  { name = "update", method = "PUT", path = "/v1/affiliate_postbacks/1", args = { 1, { code = CODE .. "&u=1" } } },
  { name = "set_status", method = "PATCH", path = "/v1/affiliate_postbacks/1", args = { 1, "rejected" } },
  { name = "delete", method = "DELETE", path = "/v1/affiliate_postbacks/1", args = { 1 } },
}

describe("batch and the single calls: one semantics", function()
  local mock, c

  setup(function()
    mock = mockproc.start { network = "sem", api_key = "sem-key" }
    c = assert(postback.client(mock:client_opts(matrix.CLIENT)))
  end)

  teardown(function()
    c:close()
    mock:stop()
  end)

  local function attempts(method, path)
    local n = 0
    for _, r in ipairs(mock:requests()) do
      if r.method == method and r.path == path then n = n + 1 end
    end
    return n
  end

  local function total_writes()
    return select(2, mock:writes())
  end

  -- What one run of op did, as comparable plain values.
  local function outcome(op, value, err)
    local o = { ok = value ~= nil }
    if value == nil then
      o.kind, o.status, o.attempts = err.kind, err.status, err.attempts
    elseif type(value) == "table" then
      o.value = value.id
    else
      o.value = tostring(value)
    end
    o.tries = attempts(op.method, op.path)
    o.writes = total_writes()
    o.postbacks = mock:stats().postbacks
    return o
  end

  local function fresh(fault, op)
    mock:reset()
    mock:seed { count = 2, offer_id = 0, type = 2, code = CODE }
    mock:fault(matrix.aim(fault, op.method, op.path))
  end

  -- Waits until the mock has applied what it received (a slow answer is
  -- applied after its delay, and must not land in the next case).
  local function settle(fault, t0)
    if fault.settle then
      local left = t0 + fault.settle - core.now()
      if left > 0 then core.sleep(left) end
    end
  end

  local function single(fault, op)
    fresh(fault, op)
    local t0 = core.now()
    local ok, value, err = pcall(c[op.name], c, unpack(op.args))
    assert(ok, "the single call raised: " .. tostring(value))
    settle(fault, t0)
    return outcome(op, value, err)
  end

  local function batched(fault, op)
    fresh(fault, op)
    local t0 = core.now()
    local ops = { { op.name, unpack(op.args) }, { "get", 2 } }
    local ok, results = pcall(c.batch, c, ops)
    assert(ok, "batch raised: " .. tostring(results))
    settle(fault, t0)
    assert.equal(2, #results)
    local companion = results[2]
    assert(companion.ok, "the other op of the batch failed: " .. tostring(companion.error))
    assert.equal(2, companion.value.id)
    assert.equal(1, attempts("GET", "/v1/affiliate_postbacks/2"))
    local r = results[1]
    return outcome(op, r.ok and r.value or nil, r.error)
  end

  local function show(o)
    local parts = {}
    for _, k in ipairs { "ok", "kind", "status", "attempts", "value", "tries", "writes", "postbacks" } do
      if o[k] ~= nil then parts[#parts + 1] = k .. "=" .. tostring(o[k]) end
    end
    return "{" .. table.concat(parts, " ") .. "}"
  end

  for _, fault in ipairs(matrix.FAULTS) do
    for _, op in ipairs(OPS) do
      it(op.name .. " under " .. fault.name .. ": single call and batch agree", function()
        local a = single(fault, op)
        local b = batched(fault, op)
        assert.same(a, b, ("single %s, batch %s"):format(show(a), show(b)))
        -- and both keep the matrix's promise
        local want = op.post and fault.post or fault.idem
        for way, o in pairs { single = a, batch = b } do
          if want.ok then
            assert(o.ok, ("%s: failed: %s"):format(way, show(o)))
          else
            assert(not o.ok, ("%s: succeeded: %s"):format(way, show(o)))
            assert.equal(want.kind, o.kind, way)
            assert.equal(want.tries, o.attempts, way)
          end
          assert.equal(want.tries, o.tries, way .. ": attempts at the mock")
          if op.post then assert.equal(2 + want.created, o.postbacks, way .. ": postbacks created") end
        end
      end)
    end
  end

  describe("the rate limit", function()
    it("6 gets at rate_limit = 2 take >= 2 s through batch as through c:get", function()
      mock:reset()
      mock:seed { count = 1, offer_id = 0, type = 2, code = CODE }
      local one = assert(postback.client(mock:client_opts { rate_limit = 2 }))
      local t0 = core.now()
      for _ = 1, 6 do assert(one:get(1)) end
      local through_get = core.now() - t0
      one:close()
      local many = assert(postback.client(mock:client_opts { rate_limit = 2 }))
      local ops = {}
      for i = 1, 6 do ops[i] = { "get", 1 } end
      t0 = core.now()
      local results = many:batch(ops, { concurrency = 6 })
      local through_batch = core.now() - t0
      many:close()
      for i = 1, 6 do assert(results[i].ok, tostring(results[i].error)) end
      assert.equal(12, attempts("GET", "/v1/affiliate_postbacks/1"))
      assert.is_true(through_get >= 2, ("c:get: %.3f s"):format(through_get))
      assert.is_true(through_batch >= 2, ("batch: %.3f s (c:get: %.3f s)"):format(through_batch, through_get))
      if not testenv.slow then
        assert.is_true(math.abs(through_batch - through_get) < 1,
          ("batch %.3f s, c:get %.3f s"):format(through_batch, through_get))
      end
    end)
  end)

  describe("a DELETE whose first answer is lost", function()
    it("is a success both ways (the retry finds the postback gone)", function()
      mock:reset()
      mock:seed { count = 5, offer_id = 0, type = 2, code = CODE }
      local faults = {}
      for id = 1, 5 do
        faults[id] = { fault = "reset_after", method = "DELETE", match = "/v1/affiliate_postbacks/" .. id, times = 1 }
      end
      mock:fault(faults)
      local v, err = c:delete(1)
      assert(v, "c:delete: " .. tostring(err))
      local results = c:batch { { "delete", 2 }, { "delete", 3 }, { op = "delete", id = 4 }, { "delete", 5 } }
      for i, r in ipairs(results) do assert(r.ok, ("op %d: %s"):format(i, tostring(r.error))) end
      for id = 1, 5 do
        assert.equal(2, attempts("DELETE", "/v1/affiliate_postbacks/" .. id), "postback " .. id)
      end
      assert.equal(0, mock:stats().postbacks)
    end)

    it("a DELETE of a postback that never existed is still a 404 both ways", function()
      mock:reset()
      local v, err = c:delete(7)
      assert.is_nil(v)
      assert.equal(404, err.status)
      local r = c:batch { { "delete", 7 } }
      assert.is_false(r[1].ok)
      assert.equal(404, r[1].error.status)
      assert.equal("api", r[1].error.kind)
    end)
  end)

  describe("a POST that may have reached the server", function()
    local REC = { offer_id = 0, affiliate_id = 1, type = 2, code = CODE }

    for _, f in ipairs {
      { name = "reset after it was applied", spec = { fault = "reset_after" }, kind = "transport", created = 5 },
      { name = "truncated answer", spec = { fault = "truncated" }, kind = "transport", created = 5 },
      { name = "503", spec = { fault = "status", status = 503 }, kind = "api", created = 0 },
      { name = "reset before it was read", spec = { fault = "reset_before" }, kind = "transport", created = 0 },
    } do
      it("is never sent twice, single or in a batch of 5: " .. f.name, function()
        for _, way in ipairs { "single", "batch" } do
          mock:reset()
          local spec = { method = "POST", times = 5 }
          for k, v in pairs(f.spec) do spec[k] = v end
          mock:fault(spec)
          local errs = {}
          if way == "single" then
            for i = 1, 5 do
              local pb, err = c:create(REC)
              assert.is_nil(pb, way)
              errs[i] = err
            end
          else
            local ops = {}
            for i = 1, 5 do ops[i] = { "create", REC } end
            for i, r in ipairs(c:batch(ops, { concurrency = 5 })) do
              assert.is_false(r.ok, way)
              errs[i] = r.error
            end
          end
          for i, err in ipairs(errs) do
            assert.equal(f.kind, err.kind, way .. " " .. i .. ": " .. tostring(err))
            assert.equal(1, err.attempts, way .. " " .. i)
          end
          assert.equal(5, attempts("POST", "/v1/affiliate_postbacks"), way .. ": POSTs at the mock")
          assert.equal(f.created, mock:stats().postbacks, way .. ": postbacks created")
        end
      end)
    end
  end)
end)
