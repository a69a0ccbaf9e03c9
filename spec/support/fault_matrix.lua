--- The fault matrix: every fault the mock can inject, and what it does to
-- an idempotent API call and to a POST (create) with the client options
-- below (retries = 3, timeout = 0.5 s, max_body = 1 MiB).
--   ok = the call succeeds; kind = the error kind; tries = attempts at the
--   mock; created = postbacks at the mock after a create; settle = seconds
--   to wait (from the start of the call) before the mock has applied what
--   it received (a slow answer is applied after its delay).
local M = {}

M.CLIENT = { retries = 3, timeout = 0.5, max_body = 1024 * 1024 }

M.FAULTS = {
  { name = "5xx burst shorter than the retry budget",
    spec = { fault = "status", status = 503, times = 2 },
    idem = { ok = true, tries = 3 }, post = { kind = "api", tries = 1, created = 0 } },
  { name = "5xx burst longer than the retry budget",
    spec = { fault = "status", status = 500, times = 50 },
    idem = { kind = "api", tries = 4 }, post = { kind = "api", tries = 1, created = 0 } },
  { name = "429 with Retry-After in seconds",
    spec = { fault = "status", status = 429, retry_after = "0", times = 1 },
    idem = { ok = true, tries = 2 }, post = { kind = "api", tries = 1, created = 0 } },
  { name = "429 with Retry-After as an HTTP date",
    spec = { fault = "status", status = 429, retry_after = "Wed, 21 Oct 2015 07:28:00 GMT", times = 1 },
    idem = { ok = true, tries = 2 }, post = { kind = "api", tries = 1, created = 0 } },
  { name = "connection reset before the request was read",
    spec = { fault = "reset_before", times = 1 },
    idem = { ok = true, tries = 2 }, post = { kind = "transport", tries = 1, created = 0 } },
  { name = "connection reset after the request was applied",
    spec = { fault = "reset_after", times = 1 },
    idem = { ok = true, tries = 2 }, post = { kind = "transport", tries = 1, created = 1 } },
  { name = "answer slower than the timeout",
    spec = { fault = "slow", delay = 1.2, times = 1 }, settle = 1.4,
    idem = { ok = true, tries = 2 }, post = { kind = "timeout", tries = 1, created = 1 } },
  { name = "garbage JSON",
    spec = { fault = "malformed", times = 1 },
    idem = { kind = "decode", tries = 1 }, post = { kind = "decode", tries = 1, created = 0 } },
  { name = "truncated body",
    spec = { fault = "truncated", times = 1 },
    idem = { ok = true, tries = 2 }, post = { kind = "transport", tries = 1, created = 1 } },
  { name = "body over the size cap",
    spec = { fault = "oversized", size = 2 * 1024 * 1024, times = 1 },
    idem = { kind = "transport", tries = 1 }, post = { kind = "transport", tries = 1, created = 0 } },
  { name = "wrong content type",
    spec = { fault = "content_type", content_type = "text/html", times = 1 },
    idem = { ok = true, tries = 1 }, post = { ok = true, tries = 1, created = 1 } },
}

--- A copy of a fault's spec aimed at one method and path.
function M.aim(fault, method, match)
  local spec = {}
  for k, v in pairs(fault.spec) do spec[k] = v end
  spec.method, spec.match = method, match
  return spec
end

return M
