-- retry.delay: the wait before a retry under a retry_schedule or under
-- exponential backoff with full jitter, Retry-After honoured.
local retry = require "postback.retry"

describe("retry.delay", function()
  it("follows a retry_schedule, and allows no retry past its end", function()
    local p = { retry_schedule = { 5, 300, 1800 } }
    assert.equal(5, retry.delay(p, 1))
    assert.equal(300, retry.delay(p, 2))
    assert.equal(1800, retry.delay(p, 3))
    assert.is_nil(retry.delay(p, 4))
    assert.is_nil(retry.delay({ retry_schedule = {} }, 1))
  end)

  it("backs off exponentially with full jitter within retries and backoff_max", function()
    local p = { retries = 4, backoff_base = 1, backoff_max = 5 }
    for _ = 1, 200 do
      local d1, d3, d4 = retry.delay(p, 1), retry.delay(p, 3), retry.delay(p, 4)
      assert.is_true(d1 >= 0 and d1 <= 1)
      assert.is_true(d3 >= 0 and d3 <= 4)
      assert.is_true(d4 >= 0 and d4 <= 5)
    end
    assert.is_nil(retry.delay(p, 5))
    assert.is_nil(retry.delay({ retries = 0, backoff_base = 1, backoff_max = 5 }, 1))
  end)

  it("honours a longer Retry-After, up to retry_after_max", function()
    local p = { retry_schedule = { 5, 10 } }
    assert.equal(60, retry.delay(p, 1, 60))
    assert.equal(5, retry.delay(p, 1, 2)) -- a shorter one does not shorten the schedule
    assert.equal(3600, retry.delay(p, 1, 1e9))
    assert.equal(100, retry.delay({ retry_schedule = { 5 }, retry_after_max = 100 }, 1, 1e9))
    assert.equal(5, retry.delay({ retry_schedule = { 5 }, retry_after_max = 1 }, 1, 60))
    assert.is_nil(retry.delay(p, 3, 60)) -- no retry left: Retry-After changes nothing
  end)

  it("leaves next_delay and backoff as they were", function()
    assert.is_nil(retry.next_delay({ retries = 1, backoff_base = 1, backoff_max = 2, max_retry_time = 10 }, 2, 0))
    local b = retry.backoff(3, 1, 100)
    assert.is_true(b >= 0 and b <= 4)
  end)
end)
