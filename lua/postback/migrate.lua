--- Bulk migrations: stream postbacks, transform them, apply the changes
-- concurrently, with a journal that makes a killed run resumable.
--
--   local report = postback.migrate {
--     client = c, query = { filters = { offer_id = 5 } },
--     transform = postback.transforms.replace_host("old.example", "new.example"),
--     journal = "move-hosts.journal", concurrency = 16,
--   }
--
-- The journal is an append-only file of checksummed lines (the spool
-- format). Before a change is sent, its intent (the record id and the
-- target fields) is written and synced; after the answer, its outcome. A
-- run started again with the same journal skips what is done, and for an
-- intent without an outcome re-reads the record: if it already holds the
-- target the change is recorded as done, otherwise the journal's change (not
-- a new transform) is applied. So no record is transformed twice and no
-- change is lost, wherever the previous run died (a request of the dead run
-- that reaches the API after the re-read writes the same target again).
local core = require "postback.core"
local errors = require "postback.errors"
local json = require "postback.json"
local util = require "postback.util"

local M = {}

local CHANGEABLE = { code = true, type = true, status = true }

local function argerror(msg)
  util.argerror(1, "migrate", msg, 3)
end

-- ---- journal -------------------------------------------------------------

local Journal = {}
Journal.__index = Journal

--- Opens (or creates) a journal: the state of every id it mentions.
function M.open_journal(path)
  local state = {} -- id -> {intent = change, done = bool, failed = message}
  local f = io.open(path, "rb")
  local skipped = 0
  if f then
    for line in f:lines() do
      local payload = core.spool_check(line)
      local rec = payload and json.decode(payload)
      if type(rec) == "table" and type(rec.id) == "number" then
        local id = json.tointeger(rec.id) or rec.id
        local s = state[id] or {}
        state[id] = s
        if rec.op == "intent" then
          s.intent, s.done, s.failed = rec.change, false, nil
        elseif rec.op == "done" then
          s.done = true
        elseif rec.op == "failed" then
          s.failed = rec.message or "failed"
        end
      elseif line ~= "" then
        skipped = skipped + 1 -- a torn last line: the run died while writing it
      end
    end
    f:close()
  end
  local file, err = core.spool_open(path)
  if not file then return nil, err end
  return setmetatable({ path = path, state = state, file = file, skipped = skipped }, Journal)
end

function Journal:write(rec)
  local text = assert(json.encode(rec))
  local ok, err = self.file:append(text)
  if not ok then error(errors.new("spool", { code = "io", message = "journal: " .. err }), 0) end
end

function Journal:sync()
  self.file:sync()
end

function Journal:close()
  self.file:close()
end

-- ---- changes ---------------------------------------------------------------

-- The fields of change that differ from pb (nil when none do).
local function effective(pb, change)
  local out, n = {}, 0
  for k, v in pairs(change) do
    if pb[k] ~= v then
      out[k] = v
      n = n + 1
    end
  end
  if n == 0 then return nil end
  return out
end

local function holds(pb, target)
  for k, v in pairs(target) do
    if pb[k] ~= v then return false end
  end
  return true
end

-- The client op that applies change to postback id: a PATCH when only the
-- status changes, else a PUT of the changed fields.
local function op_for(id, change)
  for k in pairs(change) do
    if k ~= "status" then return { "update", id, change } end
  end
  return { "set_status", id, change.status }
end

local function diff_line(pb, change)
  local parts = {}
  for _, k in ipairs { "code", "type", "status" } do
    if change[k] ~= nil then
      parts[#parts + 1] = ("  %s: %s -> %s"):format(k, util.tostr(pb[k]), util.tostr(change[k]))
    end
  end
  return ("postback %s (offer %s, affiliate %s)\n%s"):format(
    util.tostr(pb.id), util.tostr(pb.offer_id), util.tostr(pb.affiliate_id), table.concat(parts, "\n"))
end
M.diff_line = diff_line

-- ---- sources ---------------------------------------------------------------

--- Iterates the postbacks of a JSONL file (one object a line); raises on a
-- line that is not a JSON object, naming the line.
function M.jsonl(path)
  local f, err = io.open(path, "rb")
  if not f then error(errors.new("validation", { message = "cannot read " .. path .. ": " .. err }), 2) end
  local n = 0
  return function()
    while true do
      local line = f:read("*l")
      if not line then
        f:close()
        return nil
      end
      n = n + 1
      if line:find("%S") then
        local rec = json.decode(line)
        if type(rec) ~= "table" then
          f:close()
          error(errors.new("decode", { message = ("%s:%d: not a JSON object"):format(path, n) }), 0)
        end
        return json.postback(rec)
      end
    end
  end
end

-- ---- the run ---------------------------------------------------------------

--- The options of a run: name -> check (see postback.util.check_options).
M.OPTIONS = {
  client = { kind = "table" }, query = { kind = "table" }, source = { kind = "any" },
  transform = { kind = "function" }, journal = { kind = "string" }, dry_run = { kind = "boolean" },
  concurrency = { kind = "number", integer = true, min = 1, max = 100000 },
  limit = { kind = "number", integer = true, min = 0, max = 1e15 },
  on_progress = { kind = "function" }, on_plan = { kind = "function" }, out = { kind = "any" },
}

--- Runs a migration. Options:
--   client      the API client (required unless dry_run with a source)
--   query       list query for client:each, or
--   source      an iterator of postbacks, or a JSONL file name
--   transform   function(pb) -> changes | nil (skip) | nil, err
--   journal     path of the journal (resumable runs)
--   dry_run     write nothing: report each change to on_plan, or print a
--               diff per record to `out` (default io.stdout)
--   on_plan     function(pb, change) for each change a dry run would send
--   concurrency API calls in flight (default 8)
--   limit       stop after this many records scanned
--   on_progress function(report) after each batch and every 100 records read;
--               with a query, report.total is the number of records that
--               matched when the run started (one list call reads it)
-- Returns {scanned, changed, skipped, failed, errors = {{id=, error=}, ...}}
-- (and total), or nil, err when the run could not start or the source failed.
function M.run(opts)
  if type(opts) ~= "table" then argerror("table expected, got " .. type(opts)) end
  local problem = util.check_options(opts, M.OPTIONS)
  if problem then argerror(problem) end
  local client, transform = opts.client, opts.transform
  if type(transform) ~= "function" then argerror("option transform must be a function") end
  if client == nil and not (opts.dry_run and opts.source) then argerror("option client is required") end
  local concurrency = opts.concurrency or 8
  local out = opts.out or io.stdout
  local on_plan = opts.on_plan

  local report = { scanned = 0, changed = 0, skipped = 0, failed = 0, errors = {} }
  local source = opts.source
  if type(source) == "string" then
    local ok, it = pcall(M.jsonl, source)
    if not ok then return nil, errors.is(it) and it or errors.new("validation", { message = tostring(it) }) end
    source = it
  elseif source == nil then
    if opts.on_progress then
      -- how many records match now: progress shows done/total
      local data = client:list { limit = 1, filters = (opts.query or {}).filters }
      if data then report.total = data.totalRows end
    end
    source = client:each(opts.query or {})
  elseif type(source) ~= "function" then
    argerror("option source must be an iterator or a JSONL file name")
  end

  local journal
  if opts.journal and not opts.dry_run then
    local err
    journal, err = M.open_journal(opts.journal)
    if not journal then return nil, errors.new("spool", { code = "io", message = "journal: " .. tostring(err) }) end
  end

  local pending = {} -- {id=, change=, pb=}
  local batch_size = concurrency * 8

  local function fail(id, err)
    report.failed = report.failed + 1
    report.errors[#report.errors + 1] = { id = id, error = err }
  end

  local reported -- the counts on_progress last saw
  local function progress()
    if not opts.on_progress then return end
    local now = report.scanned .. "/" .. report.changed .. "/" .. report.skipped .. "/" .. report.failed
    if now ~= reported then
      reported = now
      opts.on_progress(report)
    end
  end

  local function flush()
    if #pending == 0 then return end
    local ops = {}
    for i, p in ipairs(pending) do
      ops[i] = op_for(p.id, p.change)
      if journal then journal:write { op = "intent", id = p.id, change = p.change } end
    end
    if journal then journal:sync() end
    local results = client:batch(ops, { concurrency = concurrency })
    for i, r in ipairs(results) do
      local p = pending[i]
      if r.ok then
        report.changed = report.changed + 1
        if journal then journal:write { op = "done", id = p.id } end
      else
        fail(p.id, r.error)
        if journal then journal:write { op = "failed", id = p.id, message = tostring(r.error) } end
      end
    end
    if journal then journal:sync() end
    pending = {}
    progress()
  end

  local ok, run_err = pcall(function()
    for pb in source do
      if opts.limit and report.scanned >= opts.limit then break end
      report.scanned = report.scanned + 1
      local id = pb.id
      local st = journal and journal.state[id]
      local change, terr
      if st and st.done then
        -- applied by an earlier run
        report.skipped = report.skipped + 1
      elseif st and st.intent then
        -- sent by an earlier run that died before the outcome: apply the
        -- journal's change unless the record already holds it
        if holds(pb, st.intent) then
          journal:write { op = "done", id = id }
          report.skipped = report.skipped + 1
        else
          change = effective(pb, st.intent)
        end
      else
        change, terr = transform(pb)
        if change == nil and terr ~= nil then
          fail(id, errors.is(terr) and terr or errors.new("validation", { message = tostring(terr) }))
        elseif change ~= nil then
          if type(change) ~= "table" then
            error("transform must return a table of changes, nil, or nil, err", 0)
          end
          for k in pairs(change) do
            if not CHANGEABLE[k] then error("transform may change code, type and status, not " .. tostring(k), 0) end
          end
          change = effective(pb, change)
          if change == nil then report.skipped = report.skipped + 1 end
        else
          report.skipped = report.skipped + 1
        end
      end
      if change then
        -- local checks, the conversion_protocol rule included, before sending
        local target = {}
        for k, v in pairs(pb) do target[k] = v end
        for k, v in pairs(change) do target[k] = v end
        local cp
        if client and change.type ~= nil and target.offer_id ~= 0 and client.check_protocol then
          local perr
          cp, perr = client:protocol(target.offer_id)
          if not cp then
            fail(id, perr)
            change = nil
          end
        end
        if change then
          local vok, list = require("postback").validate(change, { partial = true, conversion_protocol = cp })
          if vok and cp and change.type ~= nil then
            vok, list = require("postback").validate(
              { offer_id = target.offer_id, type = change.type }, { partial = true, conversion_protocol = cp })
          end
          if not vok then
            fail(id, errors.validation(list))
          elseif opts.dry_run then
            if on_plan then on_plan(pb, change) else out:write(diff_line(pb, change), "\n") end
            report.changed = report.changed + 1
          else
            pending[#pending + 1] = { id = id, change = change, pb = pb }
            if #pending >= batch_size then flush() end
          end
        end
      end
      if report.scanned % 100 == 0 then progress() end
    end
    flush()
  end)
  if journal then journal:close() end
  if not ok then
    if errors.is(run_err) then return nil, run_err end
    error(run_err, 0)
  end
  progress()
  return report
end

-- ---- ready transforms --------------------------------------------------------

local T = {}
M.transforms = T

local function code_change(fn)
  return function(pb)
    if type(pb.code) ~= "string" then return nil end
    local code = fn(pb.code, pb)
    if code == nil or code == pb.code then return nil end
    return { code = code }
  end
end

local function escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- Characters that may follow a host in a URL or in an HTML attribute.
local HOST_END = "[:/?#\"'%s>]"

-- Replaces every `from` that ends where a host ends (and, for a bare host,
-- follows "scheme://") by `to`.
local function replace_at_host(code, from, to, bare)
  local out, pos = {}, 1
  while true do
    local s, e = code:find(from, pos, true)
    if not s then break end
    local after = code:sub(e + 1, e + 1)
    local ok = (after == "" or after:find(HOST_END) ~= nil)
      and (not bare or code:sub(math.max(1, s - 40), s - 1):find("%a[%w+.-]*://$") ~= nil)
    out[#out + 1] = code:sub(pos, s - 1)
    out[#out + 1] = ok and to or from
    pos = e + 1
  end
  out[#out + 1] = code:sub(pos)
  return table.concat(out)
end

--- Replaces the host in code: replace_host("old.example", "new.example")
-- keeps scheme, port and path; with schemes on both sides
-- ("http://old.example", "https://new.example") it replaces both together.
function T.replace_host(from, to)
  assert(type(from) == "string" and type(to) == "string", "replace_host(from, to) takes two strings")
  local bare = not from:find("://", 1, true)
  return code_change(function(code) return replace_at_host(code, from, to, bare) end)
end

--- Sets a query parameter, adding it when absent: set_param("src", "ol").
-- The value is written as given (it may hold a macro such as {click_id}).
function T.set_param(name, value)
  local existing = "([?&])" .. escape_pattern(name) .. "=[^&#\"'%s>]*"
  return code_change(function(code)
    local out, n = code:gsub(existing, function(sep) return sep .. name .. "=" .. value end, 1)
    if n > 0 then return out end
    -- Append to the query: before a fragment, or the end of an HTML attribute.
    local scheme_end = code:find("://", 1, true)
    if not scheme_end then return nil end
    local q = code:find("?", scheme_end, true)
    local stop = code:find("[#\"'%s>]", q or scheme_end + 3) or (#code + 1)
    if q and q > stop then q = nil end
    local sep = q and (stop == q + 1 and "" or "&") or "?"
    return code:sub(1, stop - 1) .. sep .. name .. "=" .. value .. code:sub(stop)
  end)
end

--- Adds a query parameter only when absent.
function T.add_param(name, value)
  local set = T.set_param(name, value)
  local present = "[?&]" .. escape_pattern(name) .. "="
  return function(pb)
    if type(pb.code) == "string" and pb.code:find(present) then return nil end
    return set(pb)
  end
end

--- Removes a query parameter.
function T.remove_param(name)
  local pat = "([?&])" .. escape_pattern(name) .. "=[^&#\"'%s>]*&?"
  return code_change(function(code)
    local out = code:gsub(pat, "%1")
    -- a separator left dangling at the end of the query goes too
    out = out:gsub("[?&]([#\"'%s>])", "%1"):gsub("[?&]$", "")
    return out
  end)
end

--- Renames a macro: rename_macro("aff_sub", "aff_sub1") turns {aff_sub}
-- (and %7Baff_sub%7D) into {aff_sub1}.
function T.rename_macro(from, to)
  assert(from:match("^[%w_]+$") and to:match("^[%w_]+$"), "macro names are [A-Za-z0-9_]+")
  return code_change(function(code)
    local out = code:gsub("{" .. from .. "}", "{" .. to .. "}")
    out = out:gsub("%%7[Bb]" .. from .. "%%7[Dd]", "{" .. to .. "}")
    return out
  end)
end

--- Changes the type (checked against the offer's protocol by migrate).
function T.set_type(new_type)
  return function(pb)
    if pb.type == new_type then return nil end
    return { type = new_type }
  end
end

--- Sets the status ("approved" or "rejected").
function T.set_status(status)
  return function(pb)
    if pb.status == status then return nil end
    return { status = status }
  end
end

--- Chains transforms: each sees the record with the previous changes applied.
function T.chain(...)
  local list = { ... }
  return function(pb)
    local view, merged, any = {}, {}, false
    for k, v in pairs(pb) do view[k] = v end
    for _, t in ipairs(list) do
      local change, err = t(view)
      if change == nil and err ~= nil then return nil, err end
      if change then
        for k, v in pairs(change) do
          view[k], merged[k] = v, v
          any = true
        end
      end
    end
    return any and merged or nil
  end
end

return M
