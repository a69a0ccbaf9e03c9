--- A spool: the records a process owes (postbacks not yet delivered), kept
-- in a file so that none is lost to a crash, a full disk or a damaged line.
--
--   local spool = require "postback.spool"
--   local sp = assert(spool.open("postbacks.spool", { on_error = log }))
--   for id, rec in sp:owed() do resend(id, rec) end  -- what the last run left
--   local id = assert(sp:add { url = url })          -- on file when add returns
--   sp:done(id)                                      -- once delivered
--   sp:sync()                                        -- once a tick
--   sp:close()
--
-- Records are tables (encoded as JSON, one checksummed line each); ids are
-- given by the spool and increase, across restarts too. The file is locked
-- (a second opener gets nil, err naming the holder's pid), compacted while
-- it runs (its size follows what is owed, not what was ever added), and
-- damaged lines found in it are moved to "<path>.corrupt" and reported
-- through on_error, never dropped silently and never fatal. The C side
-- (core/spool.c) holds the guarantees; this module is its Lua face.
--
-- Durability: a record added is in the file before add returns, so a process
-- that crashes or is killed loses nothing; it is on the disk (safe from a
-- power loss) after the next sync.
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"
local json = require "postback.json"

local M = {}

--- Defaults: records marked done between compactions, longest record (bytes).
M.COMPACT_AFTER = core.SPOOL_COMPACT_AFTER
M.MAX_RECORD = core.SPOOL_MAX_RECORD

local Spool = {}
Spool.__index = Spool
Spool.__name = "postback.spool"

local OPTIONS = { compact_after = true, max_record = true, on_error = true }

local function default_on_error(err)
  io.stderr:write("postback: ", tostring(err), "\n")
end

local function is_count(v)
  return type(v) == "number" and v >= 1 and v == math.floor(v) and v < 2 ^ 53
end

-- Passes what the C spool reports (damaged records, failed compactions) to
-- on_error, each as an error table of kind "spool".
local function report(self)
  local c = self.c
  if not c then return end
  local list = c:events()
  if #list == 0 then return end
  for i = 1, #list do self.on_error(list[i]) end
  local dropped = c:stats().events_dropped
  if dropped > self.dropped then
    local n = dropped - self.dropped
    self.dropped = dropped
    self.on_error(errors.new("spool", { code = "damaged", path = self.path,
      message = ("%s: %d more events were not reported one by one (stats() counts them)"):format(self.path, n) }))
  end
end

local function live(self)
  local c = self.c
  if not c then error("spool is closed", 3) end
  return c
end

local function check_id(id, fname)
  if type(id) ~= "number" then
    util.argerror(1, fname, "id expected, got " .. type(id), 3)
  elseif not is_count(id) then
    util.argerror(1, fname, "id must be a positive integer", 3)
  end
end

--- Opens (creating, mode 0600) the spool at path.
-- opts: compact_after (records marked done between compactions, default
-- 1000), max_record (longest record in bytes, default 1 MiB), on_error(err)
-- (damaged records and failed compactions; default: a line on stderr).
-- @return spool, or nil, err (kind "spool"; code "locked" with pid, "io"
-- with errno, "invalid")
function M.open(path, opts)
  if type(path) ~= "string" then util.argerror(1, "open", "path expected, got " .. type(path), 2) end
  if opts ~= nil and type(opts) ~= "table" then
    util.argerror(2, "open", "table expected, got " .. type(opts), 2)
  end
  opts = opts or {}
  for k in pairs(opts) do
    if not OPTIONS[k] then util.argerror(2, "open", "unknown option '" .. tostring(k) .. "'", 2) end
  end
  for _, k in ipairs { "compact_after", "max_record" } do
    if opts[k] ~= nil and not is_count(opts[k]) then
      util.argerror(2, "open", "option " .. k .. " must be a positive integer", 2)
    end
  end
  if opts.on_error ~= nil and type(opts.on_error) ~= "function" then
    util.argerror(2, "open", "option on_error must be a function", 2)
  end
  local c, err = core.spool(path, { compact_after = opts.compact_after, max_record = opts.max_record })
  if not c then return nil, err end
  local self = setmetatable({ c = c, path = path, on_error = opts.on_error or default_on_error, dropped = 0 }, Spool)
  local ok, rerr = pcall(report, self)
  if not ok then
    self.c = nil
    c:close()
    error(rerr, 0)
  end
  return self
end

--- Adds a record (a table, stored as JSON) and returns its id once it is in
-- the file; nil, err when it cannot be written (the file is then as it was
-- before the call: a partial write is cut back off).
function Spool:add(record)
  local c = live(self)
  if type(record) ~= "table" then util.argerror(1, "add", "table expected, got " .. type(record), 2) end
  local text, jerr = json.encode(record)
  if not text then
    return nil, errors.new("spool", { code = "invalid", path = self.path,
      message = self.path .. ": cannot encode the record: " .. tostring(jerr) })
  end
  return c:add(text)
end

--- Marks a record done (delivered): true when it was owed, false when it was
-- not; nil, err when the mark could not be written (the record is no longer
-- owed here, and may be owed again after a restart: delivery is at least once).
function Spool:done(id)
  local c = live(self)
  check_id(id, "done")
  return c:done(id)
end

--- Moves an owed record to <path>.corrupt and marks it done, for a record
-- the caller cannot use (reported through on_error, code "discarded").
-- true, false (not owed) or nil, err (it stays owed).
function Spool:discard(id)
  local c = live(self)
  check_id(id, "discard")
  local ok, err = c:discard(id)
  report(self)
  return ok, err
end

--- Iterates the owed records in id order: `for id, record in sp:owed() do`.
-- Records added or done while iterating are seen or skipped accordingly.
-- A record whose line is damaged, or that is not a JSON table, is discarded
-- (and reported). Raises the error when the file cannot be read.
function Spool:owed()
  local c = live(self)
  local after = 0
  return function()
    while self.c == c do
      local id, text = c:next(after)
      report(self)
      if not id then
        if text then error(text, 2) end
        return nil
      end
      after = id
      local rec = json.decode(text)
      if type(rec) == "table" then return id, rec end
      c:discard(id)
      report(self)
    end
    return nil
  end
end

--- Writes what was added and done to the disk (one fdatasync), compacting
-- when due. true, or nil, err.
function Spool:sync()
  local c = live(self)
  local ok, err = c:sync()
  report(self)
  return ok, err
end

--- Compacts now: the file then holds only the owed records. true, or nil, err.
function Spool:compact()
  local c = live(self)
  local ok, err = c:compact()
  report(self)
  return ok, err
end

--- Counts: owed, owed_bytes, bytes (the file), peak_bytes, corrupt (damaged
-- records found since open), compactions, compaction_failures, added and
-- done (since open), last_id, refusing (adds refused until a failed write
-- is cut off), compaction_off, events_dropped.
function Spool:stats()
  return live(self):stats()
end

--- Syncs, releases the lock and closes. Safe to call twice (then true).
-- @return true, or nil, err when the last sync failed
function Spool:close()
  local c = self.c
  if not c then return true end
  local ok, err = c:sync()
  local rok, rerr = pcall(report, self)
  self.c = nil
  local cok, cerr = c:close()
  if not rok then error(rerr, 0) end
  if not ok then return nil, err end
  if not cok then return nil, cerr end
  return true
end

function Spool:__close()
  self:close()
end

function Spool:__gc()
  pcall(self.close, self)
end

function Spool:__tostring()
  return self.c and tostring(self.c) or "postback.spool (closed)"
end

return M
