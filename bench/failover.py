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
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/failover.py` works as well as `python -m bench.failover`
    sys.path.insert(0, str(ROOT))

from bench import time_to_failover  # noqa: E402
from bench.common import fmt, machine, make_body, write_json  # noqa: E402
from bench.failover_report import LOCAL, PHASES, REMOTE, Phase, analyse, markdown, plot  # noqa: E402
from control_plane.lab.loadgen import run_load  # noqa: E402
from control_plane.lab.stack import Stack  # noqa: E402

MODEL_PATH = "/v1/models/housing:predict"
LOCAL_CLUSTER = f"model/housing@{LOCAL}"
REGION_CLUSTERS = {f"model/housing@{r}": r for r in (LOCAL, REMOTE)}
AGGREGATE_CLUSTER = "model/housing"
POLICY = {"per_try_timeout": "1s", "timeout": "10s",
          "outlier_detection": {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "5s"}}
MODES = ("503", "429", "reset", "down", "hang", "tls")
KNOWN_MODES = ("503", "429", "500", "502", "504", "reset", "hang", "down", "tls")
WARMUP = 512
POLL_S = 0.05  # outlier-stats polling period


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
