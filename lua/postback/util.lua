--- Shared helpers of the Lua layer: "bad argument" errors, option checks
-- with did-you-mean, header checks, redaction of URLs and secrets, and the
-- one place that decides whether we run inside OpenResty.
local errors = require "postback.errors"

local M = {}

--- The library's version (postback._VERSION is "postback " .. this).
M.VERSION = "0.2.0"

--- Raises the usual "bad argument #n to 'fname' (msg)" error. level is what
-- the caller would give error() itself (this function's frame is added).
function M.argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), (level or 1) + 1)
end

-- Optimal string alignment distance (Damerau-Levenshtein with adjacent
-- transpositions), small strings only.
local function distance(a, b)
  local la, lb = #a, #b
  if math.abs(la - lb) > 2 then return 3 end
  local d = {}
  for i = 0, la do d[i] = { [0] = i } end
  for j = 0, lb do d[0][j] = j end
  for i = 1, la do
    for j = 1, lb do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      local v = math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        v = math.min(v, d[i - 2][j - 2] + 1)
      end
      d[i][j] = v
    end
  end
  return d[la][lb]
end

--- tostring, but integers up to 2^53 in all their digits (Lua 5.1 and
-- LuaJIT print numbers with 14 significant digits: 9.007199254741e+15).
M.tostr = errors.tostr

--- A number as the command line takes it: decimal digits, with one point
-- inside or before them unless integer ("10", "0.5", ".5"; no sign,
-- exponent, hex, inf or nan), or nil.
function M.decimal(s, integer)
  if type(s) ~= "string" or not s:match(integer and "^%d+$" or "^%d*%.?%d+$") then return nil end
  return tonumber(s)
end

--- The closest of names to word (at most two edits away), or nil.
function M.closest(word, names)
  if type(word) ~= "string" then return nil end
  local best, best_d
  for _, name in ipairs(names) do
    local dd = distance(word:lower(), name)
    if dd <= 2 and (not best_d or dd < best_d) then best, best_d = name, dd end
  end
  return best
end

--- " (did you mean X?)" or "".
function M.did_you_mean(word, names)
  local c = M.closest(word, names)
  return c and (" (did you mean %s?)"):format(c) or ""
end

local function describe_number(spec)
  local lo, hi = spec.min, spec.max
  local what = spec.integer and "an integer" or "a number"
  if spec.above ~= nil then return ("%s > %s"):format(what, spec.above) end
  if lo and hi then return ("%s from %s to %s"):format(what, lo, hi) end
  if lo then return ("%s >= %s"):format(what, lo) end
  return what
end

local function check_one(name, v, spec)
  local k = spec.kind
  if k == "number" then
    if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then
      return ("option %s must be %s"):format(name, describe_number(spec))
    end
    if (spec.integer and v ~= math.floor(v)) or (spec.min and v < spec.min) or (spec.max and v > spec.max)
       or (spec.above ~= nil and v <= spec.above) then
      return ("option %s must be %s, got %s"):format(name, describe_number(spec), tostring(v))
    end
  elseif k == "boolean" then
    if type(v) ~= "boolean" then return ("option %s must be true or false"):format(name) end
  elseif k == "string" then
    if type(v) ~= "string" then return ("option %s must be a string"):format(name) end
    if spec.values then
      for _, allowed in ipairs(spec.values) do if v == allowed then return nil end end
      local quoted = {}
      for i, allowed in ipairs(spec.values) do quoted[i] = ("%q"):format(allowed) end
      return ("option %s must be %s, got %q"):format(name, table.concat(quoted, " or "), v)
    end
    if spec.no_crlf and v:find("[\r\n%z]") then
      return ("option %s contains CR, LF or NUL"):format(name)
    end
  elseif k == "function" then
    if type(v) ~= "function" then return ("option %s must be a function"):format(name) end
  elseif k == "table" then
    if type(v) ~= "table" then return ("option %s must be a table"):format(name) end
  elseif k == "any" then
    return nil
  elseif type(k) == "function" then
    return k(name, v)
  end
  return nil
end

--- Checks an options table against spec = {name = {kind=, min=, max=,
-- above=, integer=, values=}, ...}: unknown names (with did-you-mean), wrong
-- types, numbers that are not finite or out of range. Returns nil, or the
-- first problem as a message naming the option.
function M.check_options(opts, spec)
  if opts == nil then return nil end
  for name, v in pairs(opts) do
    local s = spec[name]
    if s == nil then
      local names = {}
      for n in pairs(spec) do names[#names + 1] = n end
      table.sort(names)
      return ("unknown option %s%s"):format(tostring(name), M.did_you_mean(name, names))
    end
    local problem = check_one(name, v, s)
    if problem then return problem end
  end
  return nil
end

-- ---- headers -------------------------------------------------------------

M.MAX_HEADER_LINE = 8192
M.MAX_HEADERS_TOTAL = 65536

--- nil when headers (a map {Name = value} or an array of "Name: value"
-- lines) can be sent: token names (a map's key is the whole name), values
-- without CR, LF or NUL, each line at most 8 KiB and all of them at most
-- 64 KiB; else a validation error.
function M.check_headers(headers)
  if headers == nil then return nil end
  if type(headers) ~= "table" then
    return errors.new("validation", { code = "type", field = "headers", retryable = false,
      message = "headers must be a table of \"Name\" = \"value\"" })
  end
  local total = 0
  for name, value in pairs(headers) do
    local n, line
    if type(name) == "number" then
      line = type(value) == "string" and value or nil
      n = line and line:match("^([^:]*):")
    elseif type(name) == "string" and (type(value) == "string" or type(value) == "number") then
      n, line = name, name .. ": " .. tostring(value)
    end
    local bad
    if not n or n == "" or n:find("[%c%s\"(),/:;<=>?@%[\\%]{}\128-\255]") or line:find("[\r\n%z]") then
      bad = "a \"Name: value\" line without CR, LF or NUL is expected"
    elseif #line > M.MAX_HEADER_LINE then
      bad = ("header %s is longer than %d bytes"):format(n, M.MAX_HEADER_LINE)
    end
    total = total + (line and #line + 2 or 0)
    if not bad and total > M.MAX_HEADERS_TOTAL then
      bad = ("request headers are larger than %d bytes"):format(M.MAX_HEADERS_TOTAL)
    end
    if bad then
      return errors.new("validation", { code = "invalid", field = "headers", retryable = false,
        message = "header refused before sending: " .. bad })
    end
  end
  return nil
end

-- ---- redaction -------------------------------------------------------------

--- The host (and port) of a URL, lower case, without user info; nil when
-- url is not a string with a scheme and authority.
function M.host_of(url)
  if type(url) ~= "string" then return nil end
  local h = url:match("^%a[%w+.-]*://([^/?#]*)")
  return h and (h:gsub("^.*@", ""):lower())
end

--- s with its %XX escapes decoded (user info of a URL).
function M.unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- A URL without user:password@ (for errors, logs and results).
function M.redact_url(url)
  if type(url) ~= "string" or not url:find("@", 1, true) then return url end
  return (url:gsub("^(%a[%w+.-]*://)[^/?#]*@", "%1"))
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

--- Base64 (standard alphabet, padded).
function M.base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1)
      .. (b and B64:sub(c3 + 1, c3 + 1) or "=") .. (c and B64:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

local function plain_gsub(s, what, with)
  if what == "" then return s end
  local out, pos = {}, 1
  while true do
    local i, j = s:find(what, pos, true)
    if not i then break end
    out[#out + 1] = s:sub(pos, i - 1)
    out[#out + 1] = with
    pos = j + 1
  end
  if pos == 1 then return s end
  out[#out + 1] = s:sub(pos)
  return table.concat(out)
end

--- s with every secret of the list (plain strings) replaced by "[redacted]".
function M.scrub(s, secrets)
  if type(s) ~= "string" or not secrets then return s end
  for _, secret in ipairs(secrets) do
    if #secret >= 4 then s = plain_gsub(s, secret, "[redacted]") end
  end
  return s
end

-- ---- where we run -------------------------------------------------------------

--- true inside an OpenResty request, timer or ssl handler, where cosockets
-- work and a blocking call would stall the whole worker.
function M.in_nginx()
  local n = rawget(_G, "ngx")
  if type(n) ~= "table" or not n.socket or not n.get_phase then return false end
  local phase = n.get_phase()
  return phase == "rewrite" or phase == "access" or phase == "content" or phase == "timer"
    or phase == "ssl_cert" or phase == "ssl_session_fetch"
end

--- true when loaded by nginx at all (any phase, init_worker included).
function M.under_nginx()
  local n = rawget(_G, "ngx")
  return type(n) == "table" and n.get_phase ~= nil
end

--- Raises when the blocking libcurl engine is used where it would stall an
-- nginx worker.
function M.refuse_in_nginx(level)
  if M.in_nginx() then
    error("postback: the libcurl engine blocks the nginx worker; inside OpenResty use "
      .. "transport = require \"postback.transport.ngx\" (fire, fire_many, the dispatcher and "
      .. "the client pick it themselves)", (level or 1) + 1)
  end
end

--- The transport to use: the one given (a module, an object or a function),
-- else the cosocket transport inside nginx, else the libcurl engine.
function M.transport_module(given)
  if given ~= nil then return given end
  if M.in_nginx() then return require "postback.transport.ngx" end
  return require "postback.transport.curl"
end

return M
