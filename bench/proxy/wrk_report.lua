-- Loaded by bench/proxy/run into wrk: after a run, prints on one line what the harness reads.
-- Latencies are in microseconds; `status_errors` counts responses with a status of 400 or more
-- (wrk's own count), `socket_errors` failed connects, reads, writes and timeouts.
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "BENCH responses=%d duration_us=%d p50_us=%d p99_us=%d p999_us=%d status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    errors.status, errors.connect + errors.read + errors.write + errors.timeout))
end
