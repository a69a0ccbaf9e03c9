--- postback: manage Offerslook affiliate postbacks and fire them.
--
-- The public module. Rendering, encoding and validation run in the C core
-- (`postback.core`); the API client, firing and migrations are loaded on
-- first use, so a script that only renders pays for nothing else.
local core = require "postback.core"
local errors = require "postback.errors"
local util = require "postback.util"

local M = {}

M._VERSION = "postback " .. util.VERSION

--- Postback types.
M.IMAGE_PIXEL = 1
M.POSTBACK_URL = 2
M.HTML_PIXEL = 3

--- The 28 documented macro names, in the vendor's documentation order.
M.MACROS = {}
for i, name in ipairs(core.MACROS) do M.MACROS[i] = name end

--- The error metatable (compare with getmetatable(err) == postback.Error).
M.Error = errors.mt

local function argerror(n, fname, msg)
  util.argerror(n, fname, msg, 3)
end

local function opt_table(v, n, fname)
  if v ~= nil and type(v) ~= "table" then
    argerror(n, fname, "table expected, got " .. type(v))
  end
  return v or {}
end

--- The postback types an offer's conversion_protocol allows.
-- @param cp 1, 2 or 3
-- @return array of types, or nil, err (kind "validation")
function M.allowed_types(cp)
  local types = core.allowed_types(cp)
  if types then return types end
  return nil, errors.new("validation", {
    code = "range",
    field = "conversion_protocol",
    message = ("conversion_protocol must be 1, 2 or 3, got %s"):format(tostring(cp)),
  })
end

--- Validates a postback record.
-- @param rec the record (table)
-- @param opts {conversion_protocol=, partial=, max_code_len=, allow_unknown_macros=, allow_userinfo=}
-- @return true, or false, {{field=, code=, message=}, ...}
function M.validate(rec, opts)
  if type(rec) ~= "table" then argerror(1, "validate", "table expected, got " .. type(rec)) end
  opts = opt_table(opts, 2, "validate")
  local cp = opts.conversion_protocol
  if cp ~= nil and type(cp) ~= "number" then
    argerror(2, "validate", "conversion_protocol must be a number")
  end
  local max = opts.max_code_len
  if max ~= nil and (type(max) ~= "number" or max < 1) then
    argerror(2, "validate", "max_code_len must be a positive number")
  end
  return core.validate(rec, opts.partial, cp, max, opts.allow_unknown_macros, opts.allow_userinfo)
end

--- Parses postback code once; render it many times.
-- @return a template object with :render(values, opts) and :macros()
M.template = core.template

--- One-shot render: postback.render(code, values, opts).
M.render = core.render

--- Percent-encodes a string (RFC 3986 unreserved bytes are kept).
M.encode = core.encode

-- Modules loaded on first use.
local lazy = {}

--- Fires one postback (see postback.fire).
function lazy.fire()
  return require("postback.fire").fire
end

--- Fires many postbacks concurrently (see postback.fire).
function lazy.fire_many()
  return require("postback.fire").fire_many
end

--- A non-blocking dispatcher for loops (see postback.dispatcher).
function lazy.dispatcher()
  return require("postback.dispatcher").new
end

--- Journaled, resumable bulk migrations (see postback.migrate).
function lazy.migrate()
  return require("postback.migrate").run
end

--- Ready transforms for migrate: replace_host, set_param, add_param,
-- remove_param, rename_macro, set_type, set_status, chain.
function lazy.transforms()
  return require("postback.migrate").transforms
end

--- A shared, durable delivery queue on Redis Streams (see postback.queue).
function lazy.queue()
  return require("postback.queue").new
end

--- A worker that delivers a queue's entries (see postback.worker).
function lazy.worker()
  return require("postback.worker").new
end

--- A client of the Offerslook API (see postback.client).
function lazy.client()
  return require("postback.client").new
end

setmetatable(M, {
  __index = function(_, key)
    local loader = lazy[key]
    if loader then
      local v = loader()
      rawset(M, key, v)
      return v
    end
  end,
})

return M
