"""The load generators and what they measured: wrk for closed-loop HTTP/1.1, h2load for
closed-loop HTTP/2 and for fixed-rate runs of both protocols (wrk 4 has no rate mode).

Closed loop ("max"): a fixed number of requests in flight, as fast as the peer answers.
Fixed rate ("rate"): h2load sends a fixed number of requests per second on each connection;
its latency is measured from when a request was sent, not from when it was due, so a peer
that falls behind the rate shows it as fewer responses rather than as a longer tail."""

import math
import re
import subprocess
from pathlib import Path

from .peers import HOST
from .procs import pinned

WRK_SCRIPT = Path(__file__).resolve().parent.parent / "wrk_report.lua"

PROTOCOLS = {"h1": "HTTP/1.1", "h2": "HTTP/2 (h2c)"}
MODES = {"max": "closed loop", "rate": "fixed rate"}


class Plan:
    """The load of one run: protocol, mode, and how much of it."""

    def __init__(self, protocol, mode, concurrency, streams, rate, rate_connections, rate_streams=1):
        self.protocol = protocol
        self.mode = mode
        self.concurrency = concurrency
        # Fixed-rate h2 runs default to one stream in flight per connection, as h1's: with
        # more, h2load 1.52 itself adds up to a millisecond to every response at such rates
        # (0.07 ms mean against nginx with -m 1, 0.28 ms with -m 8, one connection at 500/s).
        self.streams = 1 if protocol != "h2" else (rate_streams if mode == "rate" else streams)
        self.rate = rate
        self.rate_connections = rate_connections

    def connections(self):
        if self.mode == "rate":
            return self.rate_connections
        return max(self.concurrency // self.streams, 1)

    def per_connection_rate(self):
        return max(round(self.rate / self.rate_connections), 1)

    def describe(self):
        """How the load was applied, for the report's headings."""
        if self.mode == "max":
            if self.protocol == "h1":
                return f"{self.connections()} connections, wrk"
            return f"{self.connections()} connections x {self.streams} streams, h2load"
        rate = self.per_connection_rate() * self.rate_connections
        streams = f" x up to {self.streams} streams" if self.protocol == "h2" and self.streams > 1 else ""
        return f"{rate:,} req/s over {self.rate_connections} connections{streams}, h2load"


class Measured:
    """What the load generator saw in one run."""

    def __init__(self, responses, ok, seconds, p50_us, p99_us, p999_us, non2xx, errors):
        self.responses = responses  # answered requests, whatever their status
        self.ok = ok  # 2xx answers
        self.seconds = seconds
        self.p50_us = p50_us
        self.p99_us = p99_us
        self.p999_us = p999_us
        self.non2xx = non2xx
        self.errors = errors  # failed connections and streams, timeouts

    @property
    def rps(self):
        return self.ok / self.seconds if self.seconds else 0.0


def run(plan, port, seconds, cpus, scratch):
    """Applies `plan` to 127.0.0.1:`port` for `seconds`, with the client pinned to `cpus`."""
    if plan.mode == "max" and plan.protocol == "h1":
        return _wrk(plan, port, seconds, cpus)
    return _h2load(plan, port, seconds, cpus, Path(scratch) / "h2load.log")


def _wrk(plan, port, seconds, cpus):
    # wrk takes whole seconds only (`-d1.0s` is an error).
    seconds = max(1, round(seconds))
    argv = [
        "wrk", "-t1", f"-c{plan.connections()}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(WRK_SCRIPT), "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    output = _run(pinned(cpus, argv), seconds)
    line = next((it for it in output.splitlines() if it.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no BENCH line:\n{output}")
    fields = {key: int(value) for key, value in (it.split("=") for it in line.split()[1:])}
    # wrk counts statuses of 400 and more only; the upstream's count catches the rest.
    bad = fields["status_errors"]
    return Measured(
        responses=fields["responses"],
        ok=fields["responses"] - bad,
        seconds=fields["duration_us"] / 1e6,
        p50_us=fields["p50_us"],
        p99_us=fields["p99_us"],
        p999_us=fields["p999_us"],
        non2xx=bad,
        errors=fields["socket_errors"],
    )


def _h2load(plan, port, seconds, cpus, log_file):
    argv = ["h2load", "-t1", "-c", str(plan.connections()), "-m", str(plan.streams), "-D", f"{max(1, round(seconds))}s"]
    if plan.protocol == "h1":
        argv.append("--h1")
    if plan.mode == "rate":
        argv += ["--rps", str(plan.per_connection_rate())]
    argv += ["--log-file", str(log_file), "-H", f":authority: {HOST}", f"http://127.0.0.1:{port}/"]
    output = _run(pinned(cpus, argv), seconds)

    def numbers(pattern):
        found = re.search(pattern, output)
        if not found:
            raise RuntimeError(f"h2load printed no line matching {pattern!r}:\n{output}")
        return [float(it) for it in found.groups()]

    (elapsed,) = numbers(r"finished in ([\d.]+)s")
    _, _, errored, timeouts = numbers(r"requests: \d+ total, \d+ started, (\d+) done, \d+ succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
    s2xx, s3xx, s4xx, s5xx = numbers(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    latencies = _latencies(log_file)
    log_file.unlink(missing_ok=True)
    return Measured(
        responses=int(s2xx + s3xx + s4xx + s5xx),
        ok=int(s2xx),
        seconds=elapsed,
        p50_us=percentile(latencies, 50),
        p99_us=percentile(latencies, 99),
        p999_us=percentile(latencies, 99.9),
        non2xx=int(s3xx + s4xx + s5xx),
        errors=int(errored + timeouts),
    )


def _latencies(log_file):
    """Response times in microseconds from h2load's per-request log (start, status, time),
    failed streams (status -1) left out: they are counted as errors."""
    found = []
    with open(log_file) as lines:
        for line in lines:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] != "-1":
                found.append(int(parts[2]))
    found.sort()
    return found


def percentile(sorted_values, p):
    """The nearest-rank percentile of sorted values (None when there are none)."""
    if not sorted_values:
        return None
    rank = math.ceil(p / 100 * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def _run(argv, seconds):
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout
