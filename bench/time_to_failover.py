"""Time to failover, per failure kind: what a client pays when the local region fails.

From one mode's samples (bench/failover.py) and the instant the local region started failing:

- failed-over requests: answered 200 after more than one attempt while the region failed; their
  extra latency is their p50 / p99 minus the healthy phases' p50 / p99 (same run, same machine);
- first answer from the next region: seconds from the failure to the first request answered
  200 by the remote region (the time a client waits before failover works at all);
- throughput per second of the outage (answers completed in each whole second, 200 or not, as a
  share of the healthy rate) and its minimum: the dip an average would hide;
- the longest gap between two answers (200) from the failure on, against the longest gap of the
  healthy phases: a hang's cost in time, which does not depend on where second boundaries fall
  and moves much less with the machine's load than a one-second share does.
"""

from __future__ import annotations

import math
from pathlib import Path

from bench.common import save_plot
from control_plane.lab.loadgen import Sample, percentile

SECOND = 1.0


def analyse(during: list[Sample], healthy_phases: list[list[Sample]], healthy_rps: float | None, fail: float,
            heal: float, remote: str) -> dict:
    healthy = [s for phase in healthy_phases for s in phase]
    ok_healthy = [s.latency * 1000 for s in healthy if s.status == 200]
    over = [s.latency * 1000 for s in during if s.status == 200 and s.attempts > 1]
    p50_h, p99_h = percentile(ok_healthy, 50), percentile(ok_healthy, 99)
    first_remote = min((s.started + s.latency for s in during if s.status == 200 and s.region == remote),
                       default=None)
    per_second = _per_second(during, fail, heal, healthy_rps)
    shares = [v for v in per_second if v is not None]
    # The same measure over the healthy phases: how much one second varies with nothing failing
    # (a shared 2-core machine), the floor against which the outage's worst second is read.
    healthy_seconds = [v for phase in healthy_phases if phase
                       for v in _per_second(phase, min(s.started for s in phase),
                                            max(s.started + s.latency for s in phase), healthy_rps)
                       if v is not None]

    healthy_gap = max((_longest_gap(phase, min(s.started for s in phase)) for phase in healthy_phases if phase),
                      default=None)

    def extra(value: float, base: float) -> float | None:
        return None if math.isnan(value) or math.isnan(base) else round(value - base, 1)

    return {
        "failed_over": len(over),
        "client_errors": sum(s.status != 200 for s in during),
        "healthy_p50_ms": round(p50_h, 1) if ok_healthy else None,
        "healthy_p99_ms": round(p99_h, 1) if ok_healthy else None,
        "extra_p50_ms": extra(percentile(over, 50), p50_h) if over else None,
        "extra_p99_ms": extra(percentile(over, 99), p99_h) if over else None,
        "first_remote_answer_s": round(first_remote - fail, 3) if first_remote is not None else None,
        "throughput_per_second": per_second,
        "min_second_share": min(shares) if shares else None,
        "healthy_min_second_share": min(healthy_seconds) if healthy_seconds else None,
        "longest_gap_s": _longest_gap([s for s in during if s.started + s.latency <= heal], fail),
        "healthy_longest_gap_s": healthy_gap,
    }


def _longest_gap(samples: list[Sample], start: float) -> float | None:
    """The longest time from `start` or from one answer (200) to the next, in seconds."""
    done = sorted(s.started + s.latency for s in samples if s.status == 200)
    if not done:
        return None
    return round(max(b - a for a, b in zip([start, *done], done)), 3)


def _per_second(samples: list[Sample], start: float, end: float, rate: float | None) -> list[float | None]:
    """Answers (200) completed in each whole second from start to end (a partial last second is
    left out), as a share of `rate`."""
    out: list[float | None] = []
    for i in range(int((end - start) // SECOND)):
        lo = start + i * SECOND
        done = sum(lo <= s.started + s.latency < lo + SECOND for s in samples if s.status == 200)
        out.append(round(done / SECOND / rate, 3) if rate else None)
    return out


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "–" if value is None else f"{format(value, spec)}{suffix}"


def headline_table(results: list[dict]) -> str:
    lines = ["| local region fails with | client errors | failed-over requests | extra latency p50 | "
             "extra latency p99 | first answer from the next region | worst second of the outage | "
             "outage average | worst healthy second | longest gap between answers, outage / healthy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        t = r["time_to_failover"]
        lines.append(
            f"| {label(r)} | {t['client_errors']} | {t['failed_over']:,} | "
            f"{_fmt(t['extra_p50_ms'], '.0f', ' ms')} | {_fmt(t['extra_p99_ms'], '.0f', ' ms')} | "
            f"{_fmt(t['first_remote_answer_s'], '.3f', ' s')} | "
            f"{_fmt(t['min_second_share'] and 100 * t['min_second_share'], '.0f', '%')} | "
            f"{_fmt(r['outage_rps_share'] and 100 * r['outage_rps_share'], '.0f', '%')} | "
            f"{_fmt(t['healthy_min_second_share'] and 100 * t['healthy_min_second_share'], '.0f', '%')} | "
            f"{_fmt(t.get('longest_gap_s'), '.2f', ' s')} / {_fmt(t.get('healthy_longest_gap_s'), '.2f', ' s')} |")
    return "\n".join(lines)


def label(result: dict) -> str:
    """The failure kind's name, with the run's number when a kind was run more than once."""
    name = KIND_NAMES.get(result["mode"], result["mode"])
    return f"{name}, run {result['repeat']}" if result.get("repeat") else name


KIND_NAMES = {"503": "503", "429": "429 (quota)", "reset": "connection reset", "down": "connection refused",
              "hang": "hang (accepts, never answers)", "tls": "TLS handshake failure", "500": "500",
              "502": "502", "504": "504"}


def plot_throughput(results: list[dict], path: Path) -> str:
    try:
        import matplotlib
    except ImportError:
        return "matplotlib not installed: plot skipped (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    top = 130.0
    for r in results:
        shares = [100 * v if v is not None else float("nan") for v in r["time_to_failover"]["throughput_per_second"]]
        top = max([top, *(v + 10 for v in shares if not math.isnan(v))])
        ax.plot(range(1, len(shares) + 1), shares, marker="o", ms=3, lw=1.2, label=label(r))
    ax.axhline(95, c="gray", ls="--", lw=0.8, label="95% target")
    ax.set_xlabel("second of the outage")
    ax.set_ylabel("answers/s, % of healthy")
    ax.set_ylim(0, top)
    ax.set_title("Throughput in each second while the local region fails (64 connections)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    return save_plot(fig, path, dpi=110)
