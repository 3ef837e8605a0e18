"""Failover under load: the local region fails, then heals, while clients keep sending.

For each failure mode of the local region ("503", "down", "hang", ...) a fresh two-region
stack is started (Envoy in us-central1, failover to us-east4; ejection state would carry
over otherwise) and driven through four phases with `concurrency` connections:

  before      N requests, both regions healthy
  during      the local region fails; load runs for --outage-s seconds (capped in count)
  recovering  the local region heals; load runs in short chunks until a request is answered
              by the local region again (bounded by --recovery-timeout)
  after       N requests once traffic is back on the local region

"Healthy" throughput, the baseline for the ratios, is the before and after phases together.
Every loop is bounded by count and time. A thread polls Envoy's outlier-detection stats
(ejections of the local cluster) so ejection times can be read against the samples.

Output: a JSON file under --out (default bench/results/failover-<timestamp>.json), a
Markdown table on stdout and, when matplotlib is installed, a latency-over-time plot
(default docs/img/failover-latency.png).

    python -m bench.failover [--requests N] [--concurrency C] [--modes 503,down,hang] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/failover.py` works as well as `python -m bench.failover`
    sys.path.insert(0, str(ROOT))

from bench import time_to_failover  # noqa: E402
from bench.common import fmt, machine, save_plot, write_json  # noqa: E402
from control_plane.lab.loadgen import Sample, percentile, run_load  # noqa: E402
from control_plane.lab.stack import Stack  # noqa: E402

LOCAL, REMOTE = "us-central1", "us-east4"
MODEL_PATH = "/v1/models/housing:predict"
LOCAL_CLUSTER = f"model/housing@{LOCAL}"
REGION_CLUSTERS = {f"model/housing@{r}": r for r in (LOCAL, REMOTE)}
AGGREGATE_CLUSTER = "model/housing"
POLICY = {"per_try_timeout": "1s", "timeout": "10s",
          "outlier_detection": {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "5s"}}
MODES = ("503", "429", "reset", "down", "hang", "tls")
KNOWN_MODES = ("503", "429", "500", "502", "504", "reset", "hang", "down", "tls")
PHASES = ("before", "during", "recovering", "after")
WARMUP = 512
BIN_S = 0.25  # timeline resolution (JSON and plot)
POLL_S = 0.05  # outlier-stats polling period
MAX_ERROR_SAMPLES = 50  # per phase, kept verbatim in the JSON


def make_body(target: int = 1024) -> bytes:
    """A Vertex `instances` payload of about `target` bytes (deterministic)."""
    instances: list[dict] = []
    while True:
        i = len(instances)
        candidate = instances + [{"id": i, "features": [round((i * 7 + j) * 0.0137, 4) for j in range(6)]}]
        body = json.dumps({"instances": candidate}, separators=(",", ":")).encode()
        if len(body) > target:
            return json.dumps({"instances": instances}, separators=(",", ":")).encode()
        instances = candidate


# --------------------------------------------------------------------------- Envoy stats


class EjectionWatch(threading.Thread):
    """Polls the local cluster's outlier-detection stats; records when ejections start and end."""

    def __init__(self, envoy, t0: float):
        super().__init__(name="ejection-watch", daemon=True)
        self.envoy, self.t0 = envoy, t0
        self.events: list[dict] = []  # {"t", "active", "enforced_total"} on every change
        # {"t", region: Envoy's health flags of that region's host} on every change: which region
        # was out, and why (failed_outlier_check, failed_active_hc), when both were out at once.
        self.health: list[dict] = []
        self._halt = threading.Event()
        self._query = "stats?filter=" + urllib.parse.quote(
            "^cluster." + re.escape(LOCAL_CLUSTER) + r"\.outlier_detection\.ejections_(active|enforced_total)$")

    def read(self) -> tuple[int, int]:
        values = {}
        for line in self.envoy.admin(self._query).splitlines():
            name, _, value = line.partition(": ")
            values[name.rsplit(".", 1)[-1]] = int(value)
        return values.get("ejections_active", 0), values.get("ejections_enforced_total", 0)

    def read_health(self) -> dict[str, str]:
        flags = {}
        for line in self.envoy.admin("clusters").splitlines():
            name, _, rest = line.partition("::")  # name::address::health_flags::flags
            if name in REGION_CLUSTERS and "::health_flags::" in rest:
                flags[REGION_CLUSTERS[name]] = line.rsplit("::", 1)[1]
        return flags

    def run(self) -> None:
        last, last_health = None, None
        while not self._halt.is_set():
            t = round(time.monotonic() - self.t0, 3)
            try:
                state, health = self.read(), self.read_health()
            except (OSError, ValueError):
                state, health = None, None
            if state is not None and state != last:
                self.events.append({"t": t, "active": state[0], "enforced_total": state[1]})
                last = state
            if health is not None and health != last_health:
                self.health.append({"t": t, **health})
                last_health = health
            self._halt.wait(POLL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def ejected_intervals(self, end: float) -> list[tuple[float, float]]:
        out, start = [], None
        for e in self.events:
            if e["active"] and start is None:
                start = e["t"]
            elif not e["active"] and start is not None:
                out.append((start, e["t"]))
                start = None
        if start is not None:
            out.append((start, end))
        return out


def retry_stats(envoy) -> dict[str, int]:
    prefix = f"cluster.{AGGREGATE_CLUSTER}."
    stats = envoy.stats(urllib.parse.quote("^" + re.escape(prefix) + "upstream_rq_retry"))
    return {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}


# --------------------------------------------------------------------------- one mode


@dataclass
class Phase:
    name: str
    samples: list[Sample] = field(default_factory=list)  # .started is seconds since the mode's t0
    duration: float = 0.0  # sum of the load runs' wall time
    cut_short: bool = False  # a count-bounded phase hit its deadline
    retries: dict[str, int] = field(default_factory=dict)  # Envoy's retry counters, delta over the phase


def run_phase(phase: Phase, url: str, t0: float, total: int, concurrency: int, body: bytes,
              deadline_s: float) -> None:
    begin = time.monotonic()  # run_load takes its own clock within microseconds of this
    result = asyncio.run(run_load(url, total, concurrency, body, deadline_s=deadline_s))
    offset = begin - t0
    for s in result.samples:
        s.started += offset
    phase.samples.extend(result.samples)
    phase.duration += result.duration


def stack_config(args: argparse.Namespace) -> dict:
    """The recommended setup for hung regions (docs/CONFIG.md): HTTP probes of both regions,
    hedged predicts, a short per-try timeout; --no-probes / --no-hedge measure without them."""
    policy = {**POLICY, "per_try_timeout": f"{args.per_try_timeout}s", "hedge": not args.no_hedge}
    if args.connect_timeout is not None:
        policy["connect_timeout"] = f"{args.connect_timeout}s"
    extra: dict = {"policy": policy}
    if not args.no_probes:
        probe = {"kind": "http", "interval": f"{args.probe_interval}s", "timeout": f"{min(1.0, args.probe_interval)}s",
                 "unhealthy_threshold": 2, "healthy_threshold": 2}
        extra["regions"] = {LOCAL: {"health_check": probe}, REMOTE: {"health_check": probe}}
    return extra


def tls_setup(workdir: str) -> tuple[dict, str]:
    """TLS to both regions, as to Vertex (and so a TLS handshake failure can be injected)."""
    import ssl

    import trustme

    ca = trustme.CA()
    ca_file = Path(workdir) / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    contexts = {}
    for region in (LOCAL, REMOTE):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(f"{region}-aiplatform.googleapis.com").configure_cert(context)
        contexts[region] = context
    return contexts, str(ca_file)


def run_mode(mode: str, args: argparse.Namespace, body: bytes) -> dict:
    cadir = tempfile.mkdtemp(prefix="failover-ca-")
    contexts, ca_file = tls_setup(cadir)
    stack = Stack(regions=(LOCAL, REMOTE), envoys=(LOCAL,), extra=stack_config(args), tls=contexts, ca_file=ca_file)
    local, envoy, url = stack.emulators[LOCAL], stack.envoys[LOCAL], stack.url(MODEL_PATH)
    phases = {name: Phase(name) for name in PHASES}
    marks: dict[str, float | None] = {}
    watch = None
    try:
        asyncio.run(run_load(url, WARMUP, args.concurrency, body, deadline_s=30))  # connections, caches
        # The load generator, the emulators and the control plane share this process: a full garbage
        # collection over the growing sample lists pauses all of them (measured: 30-80 ms at 40k
        # samples, more later), which would show up as latency spikes no data plane caused.
        gc.collect()
        gc.freeze()
        gc.disable()
        t0 = time.monotonic()
        watch = EjectionWatch(envoy, t0)
        watch.start()

        def timed(phase: Phase, fn) -> None:
            before = retry_stats(envoy)
            fn()
            after = retry_stats(envoy)
            phase.retries = {k: after[k] - before.get(k, 0) for k in after}

        def before() -> None:
            run_phase(phases["before"], url, t0, args.requests, args.concurrency, body, args.phase_deadline)
            phases["before"].cut_short = len(phases["before"].samples) < args.requests

        timed(phases["before"], before)

        marks["fail"] = time.monotonic() - t0
        local.fail(mode)
        timed(phases["during"], lambda: run_phase(phases["during"], url, t0, args.outage_cap, args.concurrency,
                                                  body, args.outage_s))
        marks["heal"] = time.monotonic() - t0
        local.fail("none")

        def recover() -> None:
            deadline = time.monotonic() + args.recovery_timeout
            rec = phases["recovering"]
            while time.monotonic() < deadline:
                seen = len(rec.samples)
                run_phase(rec, url, t0, args.outage_cap, args.concurrency, body,
                          min(args.recovery_chunk_s, max(0.05, deadline - time.monotonic())))
                if any(s.region == LOCAL for s in rec.samples[seen:]):
                    return

        timed(phases["recovering"], recover)
        local_after_heal = sorted(s.started for s in phases["recovering"].samples if s.region == LOCAL)
        marks["back"] = local_after_heal[0] if local_after_heal else None

        def after() -> None:
            run_phase(phases["after"], url, t0, args.requests, args.concurrency, body, args.phase_deadline)
            phases["after"].cut_short = len(phases["after"].samples) < args.requests

        timed(phases["after"], after)
        marks["end"] = time.monotonic() - t0
    finally:
        gc.enable()
        gc.unfreeze()
        if watch is not None:
            watch.stop()
        stack.close()
        shutil.rmtree(cadir, ignore_errors=True)
    return analyse(mode, phases, marks, watch)


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
    try:
        import matplotlib
    except ImportError:
        return "matplotlib not installed: plot skipped (pip install matplotlib)"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests in the before and after phases")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {','.join(KNOWN_MODES)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="directory for the JSON")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "failover-latency.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--outage-s", type=float, default=7.0,
                        help="how long the local region fails (default 7: longer than base_ejection_time "
                             "+ interval, so one un-eject/re-eject cycle is included)")
    parser.add_argument("--outage-cap", type=int, default=200_000, help="request cap for the outage phase")
    parser.add_argument("--recovery-timeout", type=float, default=30.0)
    parser.add_argument("--recovery-chunk-s", type=float, default=1.0,
                        help="load runs in chunks this long while waiting for traffic to return")
    parser.add_argument("--phase-deadline", type=float, default=60.0, help="deadline of the before/after phases")
    parser.add_argument("--samples", action="store_true", help="also write every sample to the JSON (large)")
    parser.add_argument("--throughput-plot", type=Path, default=ROOT / "docs" / "img" / "failover-throughput.png")
    parser.add_argument("--per-try-timeout", type=float, default=0.5,
                        help="seconds (default 0.5); keep it well above the healthy p99, or healthy regions time "
                             "out, get ejected, and requests fail")
    parser.add_argument("--connect-timeout", type=float, default=None,
                        help="seconds (default: the product's, per_try_timeout within 1-5 s)")
    parser.add_argument("--probe-interval", type=float, default=1.0, help="seconds between HTTP probes")
    parser.add_argument("--no-probes", action="store_true", help="no active health checks")
    parser.add_argument("--no-hedge", action="store_true", help="no hedging of predict")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every mode this many times (a fresh stack each), one table row per run")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in KNOWN_MODES]
    if unknown or not modes:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(KNOWN_MODES)}")

    body = make_body()
    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    print(f"failover benchmark: modes {modes}, {args.requests} requests before/after, {args.outage_s:g} s outage, "
          f"{args.concurrency} connections, {len(body)} B body; {info['cores']} cores, {info['cpu']}, "
          f"Python {info['python']}, Envoy {info['envoy']}", file=sys.stderr)
    results = []
    for repeat in range(1, args.repeats + 1):
        for mode in modes:
            t = time.monotonic()
            results.append(run_mode(mode, args, body))
            r = results[-1]
            r["repeat"] = repeat if args.repeats > 1 else None
            r["loadavg"] = round(os.getloadavg()[0], 1)
            print(f"  {time_to_failover.label(r)}: {time.monotonic() - t:.1f} s, {r['client_errors_total']} client "
                  f"errors, back on local {fmt(r['heal_to_local_s'], '.2f', 'never')} s after heal, "
                  f"load average {r['loadavg']}", file=sys.stderr)
    info["loadavg_end"] = list(os.getloadavg())

    table = time_to_failover.headline_table(results) + "\n\n" + markdown(results)
    print(table)
    for r in results:
        for name in PHASES:
            for s in r["phases"][name]["error_samples"][:10]:
                print(f"error sample [{r['mode']}/{name}]: {s}", file=sys.stderr)

    if not args.no_plot:
        print(plot(results, args.plot), file=sys.stderr)
        print(time_to_failover.plot_throughput(results, args.throughput_plot), file=sys.stderr)

    doc = {
        "benchmark": "failover",
        "started": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "outage_s": args.outage_s,
                     "outage_cap": args.outage_cap, "recovery_timeout_s": args.recovery_timeout,
                     "recovery_chunk_s": args.recovery_chunk_s, "warmup": WARMUP, "body_bytes": len(body),
                     "python_gc": "disabled during each mode's measured phases",
                     "path": MODEL_PATH, "local": LOCAL, "remote": REMOTE, "config": stack_config(args),
                     "tls": True, "repeats": args.repeats},
        "command": "python -m bench.failover " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
        "markdown": table,
    }
    if args.samples:
        for out, r in zip(doc["results"], results):
            out["samples"] = [asdict(s) for s in r["_samples"]]
    path = write_json(args.out, "failover", started, doc)
    print(f"results written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
