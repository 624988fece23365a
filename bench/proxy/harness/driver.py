"""The benchmark's driver: reads the flags, installs and builds what is missing, starts the
upstream, then each peer in turn, applies every load plan to it, and writes the report
(see ../README.md). Entered through ../run."""

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

from . import install, load, peers, procs, report
from .install import say

ROOT = Path(__file__).resolve().parents[3]


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="bench/proxy/run",
        description="Benchmarks the meshc sidecar against Envoy, nginx, HAProxy and Pingora as HTTP proxies.",
    )

    def names(allowed):
        def check(text):
            found = [it.strip() for it in text.split(",") if it.strip()]
            wrong = [it for it in found if it not in allowed]
            if wrong or not found:
                raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)} (got {text!r})")
            return found

        return check

    parser.add_argument("--peers", type=names(peers.ALL_PEERS), default=list(peers.ALL_PEERS),
                        help=f"peers to run, in the harness's order (default: {','.join(peers.ALL_PEERS)})")
    parser.add_argument("--protocols", type=names(list(load.PROTOCOLS)), default=list(load.PROTOCOLS),
                        help="h1 (HTTP/1.1 keep-alive), h2 (h2c, prior knowledge); default: h1,h2")
    parser.add_argument("--modes", type=names(list(load.MODES)), default=list(load.MODES),
                        help="max (closed loop), rate (fixed request rate); default: max,rate")
    parser.add_argument("--seconds", type=float, default=10, help="length of each measured run (default 10)")
    parser.add_argument("--warmup-seconds", type=float, default=2, help="length of the warm-up run before each plan (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per plan; medians are reported (default 3)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight in closed loop: h1 connections, or h2 connections x streams (default 64)")
    parser.add_argument("--streams", type=int, default=8, help="h2 streams per connection (default 8: 8 x 8 = 64)")
    parser.add_argument("--rate", type=int, default=5000, help="total requests per second in fixed-rate runs (default 5000)")
    parser.add_argument("--rate-connections", type=int, default=10, help="connections of fixed-rate runs (default 10)")
    parser.add_argument("--rate-streams", type=int, default=1,
                        help="h2 streams a fixed-rate connection may have in flight (default 1; see README)")
    parser.add_argument("--body-bytes", type=int, default=64, help="size of the upstream's response body (default 64)")
    parser.add_argument("--proxy-cpus", default="1", help="CPU list of the proxy under test (default 1)")
    parser.add_argument("--client-cpus", default="0", help="CPU list of the load generator (default 0)")
    parser.add_argument("--upstream-cpus", default=None, help="CPU list of the upstream (default: the client's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 repeat of 3 s, 1 s warm-up")
    parser.add_argument("--out", default="target/bench-proxy", help="where results go, relative to the repository (default %(default)s)")
    parser.add_argument("--no-install", action="store_true", help="install nothing; fail if something is missing")
    parser.add_argument("--no-build", action="store_true", help="build nothing: use the sidecar, the library floor and the Pingora peer already built")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.warmup_seconds = 1, 3, 1
    if args.upstream_cpus is None:
        args.upstream_cpus = args.client_cpus
    if args.repeats < 1 or args.seconds <= 0 or args.concurrency < 1 or args.streams < 1 or args.rate < 1 or args.rate_connections < 1 or args.rate_streams < 1:
        parser.error("--repeats, --seconds, --concurrency, --streams, --rate, --rate-connections and --rate-streams must be positive")
    if args.body_bytes < 0:
        parser.error("--body-bytes must not be negative")
    # The harness's order, whatever the flag's.
    args.peers = [it for it in peers.ALL_PEERS if it in args.peers]
    return args


class Stopping(BaseException):
    """SIGTERM: unwinds like Ctrl-C so that every process is stopped."""


def _on_sigterm(signum, frame):
    raise Stopping(f"signal {signum}")


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Even when started in the background, where SIGINT comes in ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    if not args.no_install:
        install.debian_packages()
        if "envoy" in args.peers:
            install.envoy(ROOT)
    # What the harness builds, each peer's failure its own.
    builds = {
        "meshc": (peers.sidecar_binary, lambda: install.sidecar(ROOT, out / "build.log")),
        "hyper-floor": (peers.floor_binary, lambda: install.floor(ROOT, out / "build-floor.log")),
        "pingora": (peers.pingora_binary, lambda: install.pingora(ROOT, out / "build-pingora.log", args.no_install)),
    }
    problems = {}
    for name, (binary, build) in builds.items():
        if name not in args.peers:
            continue
        if args.no_build:
            if not binary(ROOT).exists():
                problems[name] = f"--no-build, and there is no {binary(ROOT)}"
            continue
        try:
            build()
        except RuntimeError as err:
            problems[name] = str(err)

    # The driver only waits while the load runs; keep it off the proxy's CPUs all the same.
    try:
        os.sched_setaffinity(0, cpu_list(args.client_cpus))
    except (OSError, ValueError) as err:
        say(f"cannot pin the driver to CPUs {args.client_cpus}: {err}")
    machine = machine_facts()
    plans = [
        load.Plan(protocol, mode, args.concurrency, args.streams, args.rate, args.rate_connections, args.rate_streams)
        for protocol in args.protocols
        for mode in args.modes
    ]
    started = datetime.datetime.now(datetime.timezone.utc)
    results = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["bench/proxy/run", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            setting: getattr(args, setting)
            for setting in ("peers", "protocols", "modes", "seconds", "warmup_seconds", "repeats", "concurrency", "streams",
                        "rate", "rate_connections", "rate_streams", "body_bytes", "proxy_cpus", "client_cpus", "upstream_cpus")
        },
        "plans": {key(plan): {"protocol": plan.protocol, "mode": plan.mode, "load": plan.describe()} for plan in plans},
        "machine": machine,
        "versions": peers.versions(ROOT, args.peers),
        "peers": {},
    }

    upstream = None
    try:
        say(f"starting the upstream (nginx) on CPUs {args.upstream_cpus}")
        upstream = peers.Upstream(work, args.upstream_cpus, args.body_bytes)
        ctx = peers.Context(ROOT, work, upstream, args.proxy_cpus)
        measured = []
        for name in args.peers:
            if name in problems:
                results["peers"][name] = {"status": "failed", "reason": problems[name]}
                say(f"{name}: failed: {problems[name].splitlines()[0]}")
            else:
                # Filled in as the peers run, so that an interrupted run keeps what it measured.
                results["peers"][name] = {"status": "interrupted", "plans": {}}
                measured.append(name)
        bench_peers(measured, ctx, plans, args, results["peers"])
        upstream.process.check_alive()
    except (KeyboardInterrupt, Stopping) as err:
        say(f"interrupted ({type(err).__name__}); stopping every process")
        results["interrupted"] = True
        raise
    finally:
        if upstream:
            upstream.stop()
        results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        results["summary"] = report.summarise(results)
        report.write(results, out)
    print(report.markdown(results))
    return 0


def key(plan):
    return f"{plan.protocol}-{plan.mode}"


def rotated(items, by):
    """`items` started `by` places on, wrapping round: the order of measured round `by`, so
    that no peer always runs first in a round, just after the heaviest run of the round
    before (direct's), or always last."""
    if not items:
        return items
    by %= len(items)
    return items[by:] + items[:by]


def bench_peers(names, ctx, plans, args, results):
    """Starts every peer in `names`, measures their idle memory, then applies every plan to
    all of them in turns: each peer's warm-up, then the first measured run of each peer, the
    second of each, and so on. A machine whose load drifts during the benchmark (a shared VM)
    then weighs on every peer alike, where running one peer's plans after another's put the
    drift between them. Each round starts one peer further on (see `rotated`). Idle peers
    wait on the proxy's CPUs without using them. Fills in `results[name]`; failures are
    recorded with the peer's log tail rather than raised."""
    running = {}
    try:
        for name in names:
            say(f"{name}: starting on CPUs {ctx.cpus}")
            try:
                running[name] = peers.start(name, ctx)
            except Exception as err:  # noqa: BLE001 - a peer that cannot start is reported, not fatal
                results[name].update(status="failed", reason=f"did not start: {err}")
                error_log = ctx.work_dir / name / "error.log"
                if error_log.exists():
                    results[name]["log_tail"] = _tail(error_log, 30)
        # start() has had each answer one request; let them settle before reading memory.
        time.sleep(1.0)
        for name, peer in running.items():
            pids = peer.pids()
            if peer.process:
                results[name]["idle_rss_kib"] = procs.memory_kib(pids, "VmRSS")
                results[name]["idle_processes"] = len(pids)
                results[name]["idle_threads"] = procs.threads(pids)
        for plan in plans:
            say(f"{load.PROTOCOLS[plan.protocol]}, {load.MODES[plan.mode]} ({plan.describe()}): {', '.join(running)} in turns")
            failed = {}
            for name, peer in running.items():
                _attempt(name, peer, plan, results[name], failed, lambda peer=peer: warm_up(peer, plan, ctx, args))
            for repeat in range(args.repeats):
                for name, peer in rotated(list(running.items()), repeat):
                    if name in failed:
                        continue
                    runs = results[name]["plans"].setdefault(key(plan), {"runs": []})["runs"]
                    say(f"  {name} ({repeat + 1}/{args.repeats}):")
                    _attempt(name, peer, plan, results[name], failed, lambda peer=peer, runs=runs: runs.append(measure(peer, plan, ctx, args)))
            for name in running:
                found = results[name]["plans"].get(key(plan))
                if found and found["runs"]:
                    found["median"] = medians(found["runs"])
            for name in [it for it, exited in failed.items() if exited]:
                peer = running.pop(name)
                peer.stop()
                results[name]["log_tail"] = log_tail(peer.process)
        for name, peer in running.items():
            if peer.process:
                results[name]["threads_after"] = procs.threads(peer.pids())
    finally:
        for name, peer in running.items():
            peer.stop()
            if peer.process:
                results[name]["log_tail"] = log_tail(peer.process)
    for name in names:
        result = results[name]
        if result["status"] == "interrupted":
            result["status"] = "ok"
        if result["status"] == "failed":
            result.setdefault("reason", "a load plan failed")
        if result["status"] == "ok":
            result.pop("log_tail", None)


def _attempt(name, peer, plan, result, failed, step):
    """Runs `step` for peer `name`; a failure is recorded against the plan, and a peer whose
    process exited takes no further part (`failed[name]` is then true)."""
    try:
        step()
    except Exception as err:  # noqa: BLE001 - recorded, and the other peers go on
        result["plans"].setdefault(key(plan), {"runs": []})["error"] = str(err)
        result["status"] = "failed"
        say(f"{name}: {key(plan)} failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        exited = bool(peer.process and peer.process.popen.poll() is not None)
        if exited:
            result["reason"] = f"exited with {peer.process.popen.returncode} during {key(plan)}"
        failed[name] = exited


def log_tail(process, lines=30):
    """The end of a peer's output, and of the error.log beside it (nginx writes there)."""
    text = process.log_tail(lines)
    error_log = process.log_path.parent / "error.log"
    tail = _tail(error_log, lines) if error_log.exists() else ""
    if tail.strip():
        text += f"\n--- {error_log.name}\n" + tail
    return text.strip("\n")


def _tail(path, lines):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def warm_up(running, plan, ctx, args):
    """The plan's unmeasured first run against one peer."""
    load.run(plan, running.ports[plan.protocol], args.warmup_seconds, args.client_cpus, ctx.work_dir)


def measure(running, plan, ctx, args):
    """One measured run of `plan` against one peer, with the peer's CPU time and peak memory
    over it and the upstream's count of what it served."""
    port = running.ports[plan.protocol]
    pids = running.pids()
    reset = procs.reset_peak_memory(pids) if pids else None
    served_before = ctx.upstream.requests_served()
    cpu_before = procs.cpu_seconds(pids)
    busy_before = procs.cpu_busy()
    measured = load.run(plan, port, args.seconds, args.client_cpus, ctx.work_dir)
    busy_after = procs.cpu_busy()
    cpu = procs.cpu_seconds(pids) - cpu_before
    # The count read after the run includes that read's own request.
    served = ctx.upstream.requests_served() - served_before - 1
    if running.process:
        running.process.check_alive()
    run = {
        "rps": measured.rps,
        "ok": measured.ok,
        "responses": measured.responses,
        "seconds": measured.seconds,
        "p50_us": measured.p50_us,
        "p99_us": measured.p99_us,
        "p999_us": measured.p999_us,
        "non2xx": measured.non2xx,
        "errors": measured.errors,
        "upstream_served": served,
        "upstream_check": None if running.self_answering else served >= measured.ok,
        # How busy each CPU was during the run (1.0: all the time), and how much of the
        # proxy's CPUs went to anything but the peer: other work on the machine (the other
        # peers wait idle on the same CPUs, and count as foreign if they are not).
        "cpu_busy": {cpu_number: _busy(busy_before, busy_after, cpu_number) for cpu_number in sorted(busy_after)},
        "proxy_cpus_foreign": _foreign(busy_before, busy_after, cpu_list(args.proxy_cpus), cpu if pids else 0.0),
        "loadavg_after": procs.loadavg(),
    }
    if pids:
        run["cpu_s"] = cpu
        run["cpu_s_per_1k"] = cpu / measured.responses * 1000 if measured.responses else None
        run["peak_rss_kib"] = procs.memory_kib(pids, "VmHWM")
        run["peak_rss_reset"] = reset
    say(
        f"    {measured.rps:,.0f} rps, p99 {_ms(measured.p99_us)} ms, "
        f"{measured.errors} errors, {measured.non2xx} non-2xx, upstream served {served:,}"
    )
    return run


def _busy(before, after, cpu_number):
    busy = after[cpu_number][0] - before.get(cpu_number, (0, 0))[0]
    total = after[cpu_number][1] - before.get(cpu_number, (0, 0))[1]
    return round(busy / total, 3) if total > 0 else None


def _foreign(before, after, cpus, peer_cpu_seconds):
    """The share of the proxy's CPUs (1.0: one whole CPU) that went to other processes."""
    numbers = [it for it in cpus if it in after]
    if not numbers:
        return None
    busy = sum(after[it][0] - before.get(it, (0, 0))[0] for it in numbers)
    wall = sum(after[it][1] - before.get(it, (0, 0))[1] for it in numbers) / len(numbers)
    return round(max(busy - peer_cpu_seconds, 0.0) / wall, 3) if wall > 0 else None


def _ms(us):
    return "-" if us is None else f"{us / 1000:.2f}"


def medians(runs):
    """The median of each figure over the runs; errors and non-2xx are summed, and the
    upstream check holds only if it held for every run."""
    found = {}
    for field in ("rps", "p50_us", "p99_us", "p999_us", "cpu_s_per_1k", "peak_rss_kib"):
        values = [run[field] for run in runs if run.get(field) is not None]
        found[field] = statistics.median(values) if values else None
    for field in ("errors", "non2xx", "ok", "responses"):
        found[field] = sum(run[field] for run in runs)
    checks = [run["upstream_check"] for run in runs if run["upstream_check"] is not None]
    found["upstream_check"] = all(checks) if checks else None
    return found


def cpu_list(text):
    """The CPUs of a taskset-style list such as "0", "0-1" or "0,2-3"."""
    found = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return found


def machine_facts():
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory_kib = int(memory.split()[1])
    except (OSError, StopIteration):
        memory_kib = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "memory_kib": memory_kib,
        "loadavg_before": [float(it) for it in Path("/proc/loadavg").read_text().split()[:3]],
        "python": platform.python_version(),
    }
