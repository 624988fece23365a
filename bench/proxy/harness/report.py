"""The report: results.json (every run's numbers, medians, versions, machine facts) and
results.md (per protocol and mode, a table with one row per peer and every figure also as a
ratio to meshc; then the issue's goals as pass or fail lines)."""

import json
import statistics
from pathlib import Path

from .load import MODES, PROTOCOLS
from .peers import OURS

MB = 1_000_000  # memory is reported in MB of 10^6 bytes, as the goal "< 8 MB" reads
IDLE_RSS_LIMIT_MB = 8
# Peers compared with meshc by the goals: (peer, the least meshc's rps must be as a multiple).
THROUGHPUT_GOALS = [("envoy", 1.5), ("nginx", 1.0), ("haproxy", 1.0)]
ADDED_P99_GOAL = ("envoy", 0.5)
IDLE_RSS_GOAL = ("envoy", 0.25)

COLUMNS = [
    # (field, heading, format, whether a ratio to meshc is shown)
    ("rps", "rps", lambda v: f"{v:,.0f}", True),
    ("p50_ms", "p50 ms", lambda v: _ms(v), True),
    ("p99_ms", "p99 ms", lambda v: _ms(v), True),
    ("p999_ms", "p99.9 ms", lambda v: _ms(v), True),
    ("added_p99_ms", "added p99 ms", lambda v: _ms(v), True),
    ("cpu_s_per_1k", "CPU s/1k req", lambda v: f"{v:.3g}", True),
    ("idle_rss_mb", "idle RSS MB", lambda v: f"{v:.1f}", True),
    ("peak_rss_mb", "peak RSS MB", lambda v: f"{v:.1f}", True),
]


def _ms(value):
    if abs(value) < 10:
        return f"{value:.3f}"
    return f"{value:.1f}"


def _ratio(value, ours):
    # Only added p99 can be zero or less (a peer's p99 below direct's: noise); no ratio then.
    if value is None or ours is None or ours <= 0 or value <= 0:
        return None
    return value / ours


def summarise(results):
    """The figures of the tables, ratios included, the notes and the goals."""
    peers = results["peers"]
    tables = {}
    for plan_key in results["plans"]:
        rows = {}
        for name, peer in peers.items():
            plan = peer.get("plans", {}).get(plan_key)
            if not plan or "median" not in plan:
                continue
            median = plan["median"]
            rows[name] = {
                "rps": median["rps"],
                "p50_ms": _us_to_ms(median["p50_us"]),
                "p99_ms": _us_to_ms(median["p99_us"]),
                "p999_ms": _us_to_ms(median["p999_us"]),
                "cpu_s_per_1k": median.get("cpu_s_per_1k"),
                "idle_rss_mb": _kib_to_mb(peer.get("idle_rss_kib")),
                "peak_rss_mb": _kib_to_mb(median.get("peak_rss_kib")),
                "errors": median["errors"],
                "non2xx": median["non2xx"],
                "upstream_check": median["upstream_check"],
            }
        direct = rows.get("direct", {}).get("p99_ms")
        for row in rows.values():
            row["added_p99_ms"] = row["p99_ms"] - direct if direct is not None and row["p99_ms"] is not None else None
        ours = rows.get(OURS)
        for name, row in rows.items():
            if ours and name != OURS:
                row["ratio_to_meshc"] = {field: _ratio(row[field], ours[field]) for field, *_ in COLUMNS}
                if name == "direct":  # its added p99 is zero by definition
                    row["ratio_to_meshc"]["added_p99_ms"] = None
        tables[plan_key] = rows
    return {"tables": tables, "goals": _goals(results, tables), "notes": _notes(results)}


def _us_to_ms(value):
    return None if value is None else value / 1000


def _kib_to_mb(value):
    return None if value is None else value * 1024 / MB


def _goals(results, tables):
    goals = []

    def add(text, ok, detail):
        goals.append({"goal": text, "status": "n/a" if ok is None else ("pass" if ok else "fail"), "detail": detail})

    for plan_key, plan in results["plans"].items():
        if plan["mode"] != "max":
            continue
        rows = tables.get(plan_key, {})
        heading = f"{PROTOCOLS[plan['protocol']]}, {MODES[plan['mode']]}"
        for peer, least in THROUGHPUT_GOALS:
            text = f"throughput ≥ {least:.1f}× {peer}'s ({heading})"
            ours, theirs = rows.get(OURS, {}).get("rps"), rows.get(peer, {}).get("rps")
            if not ours or not theirs:
                add(text, None, f"no figure for {OURS if not ours else peer}")
            else:
                detail = f"{OURS} {ours:,.0f} rps = {ours / theirs:.2f}× {peer}'s {theirs:,.0f}"
                rounds = _round_ratios(results, plan_key, peer)
                if rounds:
                    ahead = sum(it >= least for it in rounds)
                    detail += (
                        f" (round by round: {', '.join(f'{it:.2f}×' for it in rounds)};"
                        f" median {statistics.median(rounds):.2f}×, at least {least:.1f}× in {ahead} of {len(rounds)})"
                    )
                add(text, ours >= least * theirs, detail)
    peer, most = ADDED_P99_GOAL
    for plan_key, plan in results["plans"].items():
        rows = tables.get(plan_key, {})
        heading = f"{PROTOCOLS[plan['protocol']]}, {MODES[plan['mode']]}"
        text = f"added p99 over direct ≤ {most:.1f}× {peer}'s ({heading})"
        ours, theirs = rows.get(OURS, {}).get("added_p99_ms"), rows.get(peer, {}).get("added_p99_ms")
        if ours is None or theirs is None:
            missing = OURS if ours is None else peer
            add(text, None, f"no figure for {missing if 'direct' in rows else 'direct'}")
        elif theirs <= 0:
            add(text, None, f"{peer}'s p99 was not above direct's ({theirs:+.3f} ms): no overhead to compare with; {OURS} {ours:+.3f} ms")
        else:
            add(text, ours <= most * theirs, f"{OURS} {ours:+.3f} ms = {ours / theirs:.2f}× {peer}'s {theirs:+.3f} ms")
    peer, most = IDLE_RSS_GOAL
    ours = _kib_to_mb(results["peers"].get(OURS, {}).get("idle_rss_kib"))
    theirs = _kib_to_mb(results["peers"].get(peer, {}).get("idle_rss_kib"))
    text = f"idle RSS ≤ {most:.2f}× {peer}'s"
    if ours is None or theirs is None:
        add(text, None, f"no figure for {OURS if ours is None else peer}")
    else:
        add(text, ours <= most * theirs, f"{OURS} {ours:.1f} MB = {ours / theirs:.2f}× {peer}'s {theirs:.1f} MB")
    text = f"idle RSS < {IDLE_RSS_LIMIT_MB} MB"
    if ours is None:
        add(text, None, f"no figure for {OURS}")
    else:
        add(text, ours < IDLE_RSS_LIMIT_MB, f"{OURS} {ours:.1f} MB")
    return goals


def _round_ratios(results, plan_key, peer):
    """meshc's rps over `peer`'s in each round (the peers take turns, so the runs of one round
    are close in time), or nothing when either lacks a run, since the rounds would no longer
    pair."""

    def rps(name):
        plan = results["peers"].get(name, {}).get("plans", {}).get(plan_key, {})
        return [run.get("rps") for run in plan.get("runs", [])]

    ours, theirs = rps(OURS), rps(peer)
    if len(ours) < 2 or len(ours) != len(theirs) or not all(ours) or not all(theirs):
        return []
    return [a / b for a, b in zip(ours, theirs)]


def _notes(results):
    """What a reader should not miss: errors, non-2xx answers, a failed upstream check, a
    fixed rate not reached, a busy machine."""
    notes = []
    load = results["machine"]["loadavg_before"][0]
    if load > 0.5:
        notes.append(f"the machine was not idle before the run: load average {load:.2f}; figures may be noisy")
    rate = results["settings"]["rate"]
    for name, peer in results["peers"].items():
        for plan_key, plan in peer.get("plans", {}).items():
            if "error" in plan:
                notes.append(f"{name}, {plan_key}: failed: {plan['error'].splitlines()[0] if plan['error'] else '?'}")
                continue
            foreign = [run.get("proxy_cpus_foreign") or 0.0 for run in plan["runs"]]
            if max(foreign, default=0.0) > 0.1:
                notes.append(
                    f"{name}, {plan_key}: other processes took up to {max(foreign):.0%} of a CPU on the proxy's CPUs "
                    f"(runs: {', '.join(f'{it:.0%}' for it in foreign)})"
                )
            for index, run in enumerate(plan["runs"], 1):
                where = f"{name}, {plan_key}, run {index}"
                if run["errors"]:
                    notes.append(f"{where}: {run['errors']:,} errors (failed connections or streams, timeouts)")
                if run["non2xx"]:
                    notes.append(f"{where}: {run['non2xx']:,} non-2xx answers")
                if run["upstream_check"] is False:
                    notes.append(
                        f"{where}: the upstream served {run['upstream_served']:,} requests but the peer answered "
                        f"{run['ok']:,} with 2xx: some answers did not come from the upstream"
                    )
                if run.get("peak_rss_reset") is False:
                    notes.append(f"{where}: VmHWM could not be reset: peak RSS is the process's lifetime peak")
                if results["plans"][plan_key]["mode"] == "rate" and run["rps"] < 0.95 * rate:
                    notes.append(f"{where}: {run['rps']:,.0f} rps, short of the fixed rate of {rate:,}/s: the peer or the client fell behind")
    return notes


def write(results, out):
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))


def markdown(results):
    settings, machine = results["settings"], results["machine"]
    lines = ["# Proxy benchmark", ""]
    lines.append(
        f"`{results['command']}`, {results['started']} to {results.get('finished', '?')}"
        f"{' (interrupted)' if results.get('interrupted') else ''}."
    )
    lines.append("")
    lines.append(
        f"Each plan: a {settings['warmup_seconds']:g} s warm-up, then {settings['repeats']} run(s) of {settings['seconds']:g} s; "
        f"the median of each figure is shown (errors and non-2xx are summed over the runs). "
        f"The upstream (nginx) answers {settings['body_bytes']} bytes."
    )
    memory = f", {machine['memory_kib'] / 1024 / 1024:.1f} GiB" if machine.get("memory_kib") else ""
    lines.append(
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), kernel {machine['kernel']}{memory}; "
        f"load average before: {', '.join(f'{it:.2f}' for it in machine['loadavg_before'])}."
    )
    lines.append(
        f"Pinning: proxy under test on CPU {settings['proxy_cpus']}, load generator on CPU {settings['client_cpus']}, "
        f"upstream on CPU {settings['upstream_cpus']}."
    )
    lines.append(
        "Memory is in MB of 10^6 bytes, summed over a peer's processes (VmRSS idle, VmHWM during the runs). "
        "CPU is the peer's user + system time per 1,000 answered requests. "
        f"A figure in parentheses is the ratio to {OURS}'s (peer ÷ {OURS})."
    )
    lines += ["", "Versions:", ""]
    lines += [f"- {name}: {text}" for name, text in results["versions"].items()]

    summary = results.get("summary") or summarise(results)
    for plan_key, plan in results["plans"].items():
        lines += ["", f"## {PROTOCOLS[plan['protocol']]}, {MODES[plan['mode']]}: {plan['load']}", ""]
        lines.append("| peer | " + " | ".join(heading for _, heading, _, _ in COLUMNS) + " | errors | non-2xx | upstream check |")
        lines.append("|---|" + "---:|" * len(COLUMNS) + "---:|---:|---|")
        rows = summary["tables"].get(plan_key, {})
        for name, peer in results["peers"].items():
            row = rows.get(name)
            if row is None:
                state = peer["status"] if peer["status"] != "ok" else "failed"
                lines.append(f"| {name} | {state} |" + " |" * (len(COLUMNS) + 2))
                continue
            cells = []
            for field, _, form, with_ratio in COLUMNS:
                value = row.get(field)
                if value is None:
                    cells.append("–")
                    continue
                text = form(value)
                ratio = row.get("ratio_to_meshc", {}).get(field)
                if with_ratio and ratio is not None:
                    text += f" ({ratio:.2f}×)"
                cells.append(text)
            check = {True: "ok", False: "**FAILED**", None: "n/a (answers itself)"}[row["upstream_check"]]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['errors']:,} | {row['non2xx']:,} | {check} |")

    left_out = {name: peer for name, peer in results["peers"].items() if peer["status"] != "ok"}
    if left_out:
        lines += ["", "## Failed and interrupted peers", ""]
        for name, peer in left_out.items():
            reason = peer.get("reason", "")
            lines.append(f"- {name}: {peer['status']}: {reason.splitlines()[0] if reason else ''}")
            detail = "\n".join(reason.splitlines()[1:])
            tail = peer.get("log_tail", "")
            for block in (detail, tail):
                if block.strip():
                    lines += ["", "  ```", *("  " + it for it in block.splitlines()), "  ```"]
    if summary["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in summary["notes"]]
    lines += ["", "## Goals", ""]
    for goal in summary["goals"]:
        lines.append(f"- {goal['status'].upper()}: {goal['goal']}: {goal['detail']}")
    return "\n".join(lines) + "\n"
