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

local function describe(e)
  local parts = { (e.kind or "unknown") .. " error" }
  if e.status then parts[#parts + 1] = "HTTP " .. tostring(e.status) end
  if e.kind == "api" and e.code ~= nil then parts[#parts + 1] = "code " .. tostring(e.code) end
  local head = table.concat(parts, ", ")
  local msg = e.message or ""
  if e.errors and #e.errors > 0 and msg == "" then
    local list = {}
    for i, item in ipairs(e.errors) do
      list[i] = item.message or tostring(item.code)
    end
    msg = table.concat(list, "; ")
  end
  local where = ""
  if e.method or e.url then
    where = " [" .. table.concat({ e.method, e.url }, " ") .. "]"
  end
  local tries = ""
  if e.attempts and e.attempts > 1 then tries = " after " .. e.attempts .. " attempts" end
  return head .. ": " .. msg .. where .. tries
end

mt.__tostring = describe
mt.__index = nil

--- Makes an error table of the given kind from fields (the table is reused).
function M.new(kind, fields)
  fields = fields or {}
  fields.kind = kind
  fields.message = fields.message or kind
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

--- Raises the usual "bad argument #n to 'fname' (msg)" error. level is what
-- the caller would give error() itself (this function's frame is added).
function M.argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level + 1)
end

--- true when v is an error made here.
function M.is(v)
  return type(v) == "table" and getmetatable(v) == mt
end

return M
