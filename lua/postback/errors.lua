--- Error values returned by postback (never raised, except by iterators).
--
-- Every error is a table with a `kind` ("validation", "api", "http",
-- "transport", "timeout" or "decode"), a `message`, and, where they apply,
-- `status`, `code`, `errors`, `retryable`, `attempts`, `method` and `url`.
-- They share one metatable whose `__tostring` writes a line for people.
-- URLs in errors never carry credentials, and no error holds an API key.
local core = require "postback.core"

local M = {}

local mt = core.error_mt
M.mt = mt

local ESCAPES = setmetatable({ ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }, {
  __index = function(_, c) return ("\\x%02X"):format(c:byte()) end,
})

--- tostring, but integers up to 2^53 in all their digits (Lua 5.1 and
-- LuaJIT print numbers with 14 significant digits: 9.007199254741e+15).
-- Here because postback.util, which offers it as util.tostr, needs this
-- module.
function M.tostr(v)
  if type(v) == "number" and v == math.floor(v) and v >= -9007199254740992 and v <= 9007199254740992 then
    return ("%.0f"):format(v)
  end
  return tostring(v)
end

local function text(v)
  if v ~= nil then return M.tostr(v) end
end

local function describe(e)
  local parts = { (text(e.kind) or "unknown") .. " error" }
  if e.status ~= nil then parts[#parts + 1] = "HTTP " .. text(e.status) end
  if e.kind == "api" and e.code ~= nil then parts[#parts + 1] = "code " .. text(e.code) end
  local head = table.concat(parts, ", ")
  local msg = text(e.message) or ""
  if type(e.errors) == "table" and #e.errors > 0 and msg == "" then
    local list = {}
    for i, item in ipairs(e.errors) do
      list[i] = type(item) == "table" and text(item.message or item.code) or text(item)
    end
    msg = table.concat(list, "; ")
  end
  local where = {}
  if e.method ~= nil then where[#where + 1] = text(e.method) end
  if e.url ~= nil then where[#where + 1] = text(e.url) end
  local at = #where > 0 and (" [" .. table.concat(where, " ") .. "]") or ""
  local tries = ""
  if type(e.attempts) == "number" and e.attempts > 1 then tries = " after " .. e.attempts .. " attempts" end
  -- one line, whatever the caller or a server put in the fields
  return (head .. ": " .. msg .. at .. tries):gsub("[%c]", ESCAPES)
end

mt.__tostring = describe
mt.__index = nil

--- Makes an error table of the given kind from fields (the table is reused).
-- Every validation error has one shape: code and field of its (first)
-- problem, and the list of problems {field, code, message} in `errors`.
function M.new(kind, fields)
  fields = fields or {}
  fields.kind = kind
  fields.message = fields.message or kind
  if kind == "validation" then
    local list = fields.errors
    if type(list) ~= "table" or list[1] == nil then
      fields.errors = { { field = fields.field, code = fields.code or "invalid", message = fields.message } }
    else
      fields.code = fields.code or list[1].code
      fields.field = fields.field or list[1].field
    end
    fields.code = fields.code or "invalid"
  end
  return setmetatable(fields, mt)
end

--- A validation error wrapping the per-field list that `validate` returns.
function M.validation(list, message)
  if not message then
    local msgs = {}
    for i, item in ipairs(list) do msgs[i] = item.message end
    message = table.concat(msgs, "; ")
  end
  return M.new("validation", { errors = list, message = message })
end

--- true when v is an error made here.
function M.is(v)
  return type(v) == "table" and getmetatable(v) == mt
end

return M
