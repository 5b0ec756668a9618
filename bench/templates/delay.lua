-- wrk script for the fixed-load latency test: every connection waits
-- BENCH_DELAY_MS after each response before sending its next request, so
-- the offered load is about connections * 1000 / (delay + latency) req/s
-- (a closed loop with think time; wrk2's open-loop rate is not in Debian).
local d = tonumber(os.getenv("BENCH_DELAY_MS") or "10")
function delay()
  return d
end
