"""bench.failover's reading of its samples: per-phase figures, the timeline, the ejections and
what they did to throughput, the tables and the latency-over-time plot (the headline table and
the throughput plot: bench/time_to_failover.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench import time_to_failover
from bench.common import NO_MATPLOTLIB, fmt, pyplot, save_plot
from control_plane.lab.loadgen import Sample, percentile

if TYPE_CHECKING:
    from bench.failover import EjectionWatch

LOCAL, REMOTE = "us-central1", "us-east4"
PHASES = ("before", "during", "recovering", "after")
BIN_S = 0.25  # timeline resolution (JSON and plot)
MAX_ERROR_SAMPLES = 50  # per phase, kept verbatim in the JSON


@dataclass
class Phase:
    name: str
    samples: list[Sample] = field(default_factory=list)  # .started is seconds since the mode's t0
    duration: float = 0.0  # sum of the load runs' wall time
    cut_short: bool = False  # a count-bounded phase hit its deadline
    retries: dict[str, int] = field(default_factory=dict)  # Envoy's retry counters, delta over the phase


# --------------------------------------------------------------------------- analysis


def phase_stats(phase: Phase) -> dict:
    samples = phase.samples
    latencies = [s.latency * 1000 for s in samples]
    n = len(samples)
    return {
        "requests": n,
        "errors": sum(s.status != 200 for s in samples),
        "p50_ms": round(percentile(latencies, 50), 1) if n else None,
        "p99_ms": round(percentile(latencies, 99), 1) if n else None,
        "max_ms": round(max(latencies), 1) if n else None,
        "rps": round(n / phase.duration, 1) if phase.duration else None,
        "duration_s": round(phase.duration, 2),
        "second_attempt": sum(s.attempts > 1 for s in samples),
        "local_share": round(sum(s.region == LOCAL for s in samples) / n, 4) if n else None,
        "cut_short": phase.cut_short,
        "envoy_retries": phase.retries,
        "error_samples": [asdict(s) for s in samples if s.status != 200][:MAX_ERROR_SAMPLES],
    }


def timeline(samples: list[Sample], end: float) -> list[dict]:
    bins: dict[int, list[Sample]] = {}
    for s in samples:
        bins.setdefault(int(s.started // BIN_S), []).append(s)
    out = []
    for i in range(int(end // BIN_S) + 1):
        group = bins.get(i, [])
        lat = [s.latency * 1000 for s in group]
        out.append({"t": round(i * BIN_S, 3), "requests": len(group), "rps": round(len(group) / BIN_S, 1),
                    "p50_ms": round(percentile(lat, 50), 1) if lat else None,
                    "p99_ms": round(percentile(lat, 99), 1) if lat else None,
                    "errors": sum(s.status != 200 for s in group),
                    "second_attempt": sum(s.attempts > 1 for s in group),
                    "local": sum(s.region == LOCAL for s in group)})
    return out


def analyse(mode: str, phases: dict[str, Phase], marks: dict, watch: EjectionWatch) -> dict:
    stats = {name: phase_stats(p) for name, p in phases.items()}
    everything = [s for p in phases.values() for s in p.samples]
    fail, heal, back, end = marks["fail"], marks["heal"], marks["back"], marks["end"]
    ejected = watch.ejected_intervals(end)
    # Throughput while the local region was ejected (no first attempt wasted on it), outage only.
    in_outage = [(max(a, fail), min(b, heal)) for a, b in ejected if min(b, heal) > max(a, fail)]
    ejected_time = sum(b - a for a, b in in_outage)
    ejected_count = sum(any(a <= s.started < b for a, b in in_outage) for s in phases["during"].samples)
    # Ejection instants: every increase of ejections_enforced_total (an un-eject followed by a
    # re-eject within one poll shows as one long "active" interval, but as two increments).
    ejections_at, previous = [], 0
    for e in watch.events:
        ejections_at += [e["t"]] * (e["enforced_total"] - previous)
        previous = e["enforced_total"]
    unejections_at = [b for _, b in ejected if b < end]
    first_ejection = next((t for t in ejections_at if t >= fail), None)
    last_ejection = max((t for t in ejections_at if t <= heal), default=None)
    last_unejection = min((t for t in unejections_at if last_ejection is not None and t > last_ejection),
                          default=None)
    # Healthy baseline: the before and after phases together (both all-local); on a noisy machine
    # one 2 s window alone moves by several percent.
    healthy = [phases["before"], phases["after"]]
    healthy_time = sum(p.duration for p in healthy)
    healthy_rps = round(sum(len(p.samples) for p in healthy) / healthy_time, 1) if healthy_time else None

    def share(rps: float | None) -> float | None:
        return round(rps / healthy_rps, 3) if rps and healthy_rps else None

    ejected_rps = round(ejected_count / ejected_time, 1) if ejected_time > 0.5 else None
    result = {
        "mode": mode,
        "phases": stats,
        "healthy_rps": healthy_rps,
        "marks_s": {k: (round(v, 3) if v is not None else None) for k, v in marks.items()},
        "ejections": len(ejections_at),
        "ejections_at_s": ejections_at,
        "unejections_at_s": unejections_at,
        "ejected_intervals_s": [[round(a, 3), round(b, 3)] for a, b in ejected],
        "outlier_events": watch.events,
        "health_flags": watch.health,
        # Seconds of the outage during which both regions were out of Envoy's healthy set at once (then
        # every attempt goes to the first region, hung or not).
        "both_out_s": both_out(watch.health, fail, heal),
        "fail_to_first_ejection_s": round(first_ejection - fail, 3) if first_ejection is not None else None,
        "outage_rps_share": share(stats["during"]["rps"]),
        "ejected_rps": ejected_rps,
        "ejected_rps_share": share(ejected_rps),
        "ejected_share_of_outage": round(ejected_time / (heal - fail), 3) if heal > fail else None,
        "second_attempt_total": sum(s.attempts > 1 for s in everything),
        "client_errors_total": sum(s.status != 200 for s in everything),
        "heal_to_local_s": round(back - heal, 3) if back is not None else None,
        # Envoy un-ejects at the first `interval` tick after base_ejection_time x backoff; the backoff
        # grows by one per ejection and shrinks by one per tick the host spends un-ejected.
        "last_ejection_lasted_s": round(last_unejection - last_ejection, 3)
        if last_unejection is not None and last_ejection is not None else None,
        "last_ejection_to_local_s": round(back - last_ejection, 3)
        if back is not None and last_ejection is not None else None,
        "timeline": timeline(everything, end),
        "time_to_failover": time_to_failover.analyse(
            phases["during"].samples, [phases["before"].samples, phases["after"].samples], healthy_rps, fail, heal,
            REMOTE),
        "_samples": everything,  # for the plot; dropped from the JSON unless --samples
    }
    return result


def both_out(health: list[dict], start: float, end: float) -> float:
    total = 0.0
    for event, following in zip(health, [*health[1:], {"t": end}]):
        a, b = max(event["t"], start), min(following["t"], end)
        if b > a and all(event.get(r, "healthy") != "healthy" for r in (LOCAL, REMOTE)):
            total += b - a
    return round(total, 3)


# --------------------------------------------------------------------------- output


def markdown(results: list[dict]) -> str:
    lines = ["| mode | phase | requests | errors | p50 ms | p99 ms | max ms | req/s | % of healthy | 2nd attempt "
             "| local % |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        healthy = r["healthy_rps"]
        for name in PHASES:
            p = r["phases"][name]
            pct = f"{100 * p['rps'] / healthy:.0f}%" if p["rps"] and healthy else "–"
            label = {"during": f"during ({p['duration_s']:.1f} s)",
                     "recovering": f"recovering ({p['duration_s']:.1f} s)"}.get(name, name)
            lines.append(f"| {time_to_failover.label(r)} | {label}{' (cut short)' if p['cut_short'] else ''} | "
                         f"{p['requests']:,} | "
                         f"{p['errors']} | {fmt(p['p50_ms'], '.1f')} | {fmt(p['p99_ms'], '.1f')} | "
                         f"{fmt(p['max_ms'], '.0f')} | "
                         f"{fmt(p['rps'], ',.0f')} | {pct} | {p['second_attempt']:,} | "
                         f"{fmt(p['local_share'] and 100 * p['local_share'], '.0f')} |")
    lines += ["", "| mode | client errors | outage req/s vs healthy | while ejected | time ejected | "
                  "ejections | 2nd attempts | fail → ejected | last ejection lasted | healed → local | "
                  "both regions out |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        pct = lambda v: f"{100 * v:.0f}%" if v is not None else "–"  # noqa: E731
        lines.append(
            f"| {time_to_failover.label(r)} | {r['client_errors_total']} | {pct(r['outage_rps_share'])} | "
            f"{pct(r['ejected_rps_share'])} | {pct(r['ejected_share_of_outage'])} | {r['ejections']} | "
            f"{r['second_attempt_total']:,} | {fmt(r['fail_to_first_ejection_s'], '.2f')} s | "
            f"{fmt(r['last_ejection_lasted_s'], '.2f')} s | {fmt(r['heal_to_local_s'], '.2f', 'not back')} s | "
            f"{r['both_out_s']:.2f} s |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    from matplotlib import ticker

    fig, axes = plt.subplots(len(results), 1, figsize=(13, 3.2 * len(results)), sharex=True, squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        samples, marks = r["_samples"], r["marks_s"]
        colors = {LOCAL: "tab:blue", REMOTE: "tab:orange"}
        for region, color in colors.items():
            pts = [s for s in samples if s.region == region and s.status == 200 and s.attempts <= 1]
            ax.scatter([s.started for s in pts], [s.latency * 1000 for s in pts], s=1, c=color, alpha=0.25,
                       linewidths=0, rasterized=True, label=f"answered by {region}")
        double = [s for s in samples if s.attempts > 1 and s.status == 200]
        ax.scatter([s.started for s in double], [s.latency * 1000 for s in double], s=6, c="tab:purple",
                   marker="^", linewidths=0, rasterized=True, label=f"2nd attempt ({len(double):,})")
        errors = [s for s in samples if s.status != 200]
        if errors:
            ax.scatter([s.started for s in errors], [max(s.latency * 1000, 0.1) for s in errors], s=12, c="red",
                       marker="x", label=f"client error ({len(errors):,})")
        centers = [b["t"] + BIN_S / 2 for b in r["timeline"]]
        p99 = [b["p99_ms"] if b["p99_ms"] is not None else float("nan") for b in r["timeline"]]  # gaps break
        ax.plot(centers, p99, c="black", lw=0.9, label=f"p99 per {BIN_S * 1000:.0f} ms")
        ax.axvspan(marks["fail"], marks["heal"], color="red", alpha=0.08, label="local region failing")
        for i, (a, b) in enumerate(r["ejected_intervals_s"]):
            ax.axvspan(a, b, ymin=0.96, ymax=1.0, color="dimgray", label="local ejected" if i == 0 else None)
        for i, t in enumerate(r["ejections_at_s"]):
            ax.axvline(t, ymin=0.88, ymax=1.0, c="darkred", lw=1.5, label="ejection" if i == 0 else None)
        if marks.get("back") is not None:
            ax.axvline(marks["back"], c="tab:green", ls="--", lw=1,
                       label=f"back on local (+{r['heal_to_local_s']:.1f} s after heal)")
        ax2 = ax.twinx()  # throughput as a light background, last (partial) bin left out
        ax2.fill_between([b["t"] for b in r["timeline"][:-1]], [b["rps"] for b in r["timeline"][:-1]], step="post",
                         color="gray", alpha=0.15, lw=0)
        ax2.set_ylabel("req/s (gray area)", color="gray", fontsize=8)
        ax2.tick_params(axis="y", labelcolor="gray", labelsize=7)
        ax2.set_ylim(bottom=0)
        ax2.set_zorder(ax.get_zorder() - 1)
        ax.patch.set_visible(False)
        ax.set_yscale("log")
        ax.set_ylim(3, max(2000.0, 1.5 * max((x.latency * 1000 for x in samples), default=0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel("latency (ms)")
        ax.set_title(f'local region "{time_to_failover.label(r)}": {r["client_errors_total"]} client errors, '
                     f'outage throughput {100 * (r["outage_rps_share"] or 0):.0f}% of healthy', fontsize=10)
        ax.legend(loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=7, markerscale=3, borderaxespad=0)
    axes[-1, 0].set_xlabel("seconds since the healthy phase began")
    return save_plot(fig, path, dpi=110)
