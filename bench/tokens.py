"""Access tokens: OAuth grants per 10,000 requests through Envoy, and token rotation under load.

The control plane holds the Google credentials and refreshes the token on a schedule (at
`expiry - refresh_margin`, or at 80% of the lifetime for short-lived tokens); Envoy gets
each new token over SDS and injects it per attempt. A request never costs a grant. Two
cases, each on a fresh Stack (real google-auth service-account credentials against a local
token endpoint that counts grants, a Vertex emulator per region, one real Envoy):

  1h   token lifetime 1 h: 10,000 requests as fast as the load generator goes. Grants beyond
       the scheduled refresh (due 55 min after start) should be 0.
  5s   token lifetime 5 s: 10,000 requests paced over ~20 s, so the token rotates about
       every 4 s under load. Grants should equal the refresher's scheduled refreshes, no
       request should fail, and none should carry an expired token.

Side by side, the Python smart router in its original mode (bench/smart_router.py
--token-per-request: google-auth credentials refreshed for every request) sends a
smaller number of requests to the same emulators; its grants are counted the same way.

Which token each request carried is read at the emulator (it records the Authorization
header), and when each token was granted is read from the token endpoint (polled every 5 ms).

    python -m bench.tokens [--requests 10000] [--short-lifetime 5] [--pace-s 20] [--router-requests 500]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    NO_MATPLOTLIB,
    machine,
    make_body,
    pyplot,
    save_plot,
    stop_process,
    verdict_rows,
    wait_until,
    write_json,
)
from control_plane.lab.loadgen import Sample, percentile, run_load  # noqa: E402
from control_plane.lab.stack import ENDPOINT_IDS, PROJECT, Stack  # noqa: E402

LOCAL, REMOTE = "us-central1", "us-east4"
MODEL_PATH = "/v1/models/housing:predict"
POLL_S = 0.005


class GrantWatch(threading.Thread):
    """Polls the token endpoint's list of issued tokens; records when each new one appeared."""

    def __init__(self, server, known_since: float):
        super().__init__(name="grant-watch", daemon=True)
        self.server = server
        self.granted: dict[str, float] = {t: known_since for t in list(server.issued)}  # token -> time (wall)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            now = time.time()
            for token in list(self.server.issued)[len(self.granted):]:
                self.granted.setdefault(token, now)
            self._halt.wait(POLL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)
        now = time.time()
        for token in list(self.server.issued):
            self.granted.setdefault(token, now)


def run_paced(url: str, total: int, concurrency: int, body: bytes, pace_s: float) -> tuple[list[Sample], float]:
    """`total` POSTs; with pace_s > 0 started at an even rate over pace_s (at most `concurrency` in
    flight), else as fast as `concurrency` connections go. Bounded in count and time."""
    if pace_s <= 0:
        result = asyncio.run(run_load(url, total, concurrency, body, deadline_s=120))
        return result.samples, result.duration

    async def paced() -> tuple[list[Sample], float]:
        samples: list[Sample] = []
        gate = asyncio.Semaphore(concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        begin = time.monotonic()
        deadline = begin + pace_s + 60

        async def one(session: aiohttp.ClientSession) -> None:
            start = time.monotonic()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    samples.append(Sample(start - begin, time.monotonic() - start, resp.status,
                                          resp.headers.get("x-vertex-region", ""),
                                          int(resp.headers.get("x-envoy-attempt-count", "0"))))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                samples.append(Sample(start - begin, time.monotonic() - start, 0, "", 0, repr(exc)))
            finally:
                gate.release()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                         timeout=timeout) as session:
            tasks = []
            for i in range(total):
                delay = begin + i * pace_s / total - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if time.monotonic() > deadline:
                    break
                await gate.acquire()
                tasks.append(asyncio.create_task(one(session)))
            await asyncio.gather(*tasks)
        return samples, time.monotonic() - begin

    return asyncio.run(paced())


def case(name: str, lifetime: int, requests: int, concurrency: int, pace_s: float, body: bytes) -> dict:
    known_since = time.time()
    stack = Stack(regions=(LOCAL, REMOTE), envoys=(LOCAL,), token_lifetime=lifetime)
    watch = None
    try:
        stack.wait_synced(30)
        url = stack.url(MODEL_PATH)
        refresher = stack.plane.plane.tokens
        wait_until(lambda: refresher.states and refresher.states[0].refreshes_ok >= 1, 30, "the first token")
        server = stack.token_server
        watch = GrantWatch(server, known_since)
        watch.start()
        for emulator in stack.emulators.values():
            emulator.clear()
        grants0, refreshes0 = server.grants, refresher.states[0].refreshes_ok
        failed0 = refresher.states[0].refreshes_failed
        attempts0 = server.attempts
        gc.collect()
        gc.disable()
        t_start = time.time()
        samples, duration = run_paced(url, requests, concurrency, body, pace_s)
        t_end = time.time()
        gc.enable()
        grants, refreshes = server.grants - grants0, refresher.states[0].refreshes_ok - refreshes0
        refresh_failures = refresher.states[0].refreshes_failed - failed0
        attempts = server.attempts - attempts0
        state = refresher.states[0].to_dict()
        received = [r for e in stack.emulators.values() for r in e.received]
    finally:
        gc.enable()
        if watch is not None:
            watch.stop()
        stack.close()
    granted = watch.granted if watch else {}
    order = {t: i for i, t in enumerate(sorted(granted, key=granted.get))}
    uses = []
    unknown = 0
    for r in received:
        token = r.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in granted:
            unknown += 1
            continue
        uses.append({"t": r.time - t_start, "age": r.time - granted[token], "token": order[token], "region": r.region})
    in_window = sorted(t - t_start for t in granted.values() if t_start <= t <= t_end)
    intervals = [b - a for a, b in zip(in_window, in_window[1:])]
    # After each grant in the window: when the new token was first used, and the old one last used.
    switch = []
    by_token: dict[int, list[float]] = {}
    for u in uses:
        by_token.setdefault(u["token"], []).append(u["t"])
    for token, t_grant in sorted(((order[t], g - t_start) for t, g in granted.items() if t_start <= g <= t_end)):
        first_new = min(by_token.get(token, []), default=None)
        last_old = max(by_token.get(token - 1, []), default=None)
        switch.append({"grant_s": t_grant, "first_use_after_s": first_new - t_grant if first_new is not None else None,
                       "old_last_use_after_s": last_old - t_grant if last_old is not None else None})
    lat = [s.latency * 1000 for s in samples]
    schedule_s = 0.8 * lifetime if lifetime <= 300 else lifetime - 300  # refresh_margin defaults to 300 s
    window = t_end - t_start
    return {
        "case": name, "lifetime_s": lifetime, "requests": len(samples), "concurrency": concurrency,
        "paced_over_s": pace_s, "duration_s": duration, "rps": len(samples) / duration if duration else None,
        "errors": sum(s.status != 200 for s in samples),
        "error_samples": [s.__dict__ for s in samples if s.status != 200][:20],
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "grants": grants, "grant_attempts": attempts, "refreshes_scheduled_done": refreshes,
        "refresh_failures": refresh_failures,
        "schedule_every_s": schedule_s, "expected_by_schedule": int(window // schedule_s),
        "grants_per_10k": grants / len(samples) * 10_000 if samples else None,
        "grant_times_s": in_window, "grant_interval_mean_s": statistics.fmean(intervals) if intervals else None,
        "received": len(received), "unknown_token": unknown,
        "expired_uses": sum(u["age"] > lifetime for u in uses),
        "max_age_at_use_s": max((u["age"] for u in uses), default=None),
        "tokens_seen": len({u["token"] for u in uses}),
        "switch": switch,
        "new_token_first_use_max_s": max((s["first_use_after_s"] for s in switch
                                          if s["first_use_after_s"] is not None), default=None),
        "old_token_last_use_max_s": max((s["old_last_use_after_s"] for s in switch
                                         if s["old_last_use_after_s"] is not None), default=None),
        "refresher": state,
        "_uses": uses,
    }


def router_case(requests: int, concurrency: int, body: bytes, workdir: Path) -> dict:
    """The original smart router's token handling: one grant per request."""
    stack = Stack(regions=(LOCAL, REMOTE), envoys=(), token_lifetime=3600)
    proc = None
    try:
        from control_plane.lab.harness import free_port
        config = workdir / "router.json"
        config.write_text(json.dumps({
            "project": PROJECT, "local": LOCAL, "failover": [REMOTE], "default_model": "housing",
            "token": "unused", "regions": {r: {"upstream": e.url, "endpoints": {"housing": ENDPOINT_IDS[r]}}
                                           for r, e in stack.emulators.items()}}))
        port = free_port()
        log = open(workdir / "router-tokens.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "bench.smart_router", "--config", str(config), "--listen",
                                 f"127.0.0.1:{port}", "--token-per-request", str(stack.key_path)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        url = f"http://127.0.0.1:{port}{MODEL_PATH}"
        wait_until(lambda: asyncio.run(run_load(url, 1, 1, body, deadline_s=10)).samples[0].status == 200, 30,
                   "the smart router")
        grants0 = stack.token_server.grants
        result = asyncio.run(run_load(url, requests, concurrency, body, deadline_s=120))
        grants = stack.token_server.grants - grants0
        lat = [s.latency * 1000 for s in result.samples]
        return {"case": "smart router (token per request)", "requests": len(result.samples),
                "concurrency": concurrency, "duration_s": result.duration,
                "rps": len(result.samples) / result.duration, "errors": len(result.errors), "grants": grants,
                "grants_per_10k": grants / len(result.samples) * 10_000 if result.samples else None,
                "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}
    finally:
        stop_process(proc)
        stack.close()


def verdicts(doc: dict) -> list[dict]:
    rows = []
    for c in doc["cases"]:
        if c["lifetime_s"] >= 3600:
            extra = c["grants"] - c["expected_by_schedule"]
            rows.append({"target": f"grants per 10,000 requests beyond the scheduled refresh (1 h token, "
                                   f"{c['requests']:,} requests)", "goal": "0", "text": f"{extra}",
                         "met": extra == 0 and c["errors"] == 0})
        else:
            rows.append({"target": f"{c['lifetime_s']} s token: grants == scheduled refreshes, no failed request "
                                   f"({c['requests']:,} requests over {c['duration_s']:.0f} s)",
                         "goal": "equal, 0 failed",
                         "text": f"{c['grants']} grants = {c['refreshes_scheduled_done']} refreshes; "
                                 f"{c['errors']} failed, {c['expired_uses']} expired",
                         "met": c["grants"] == c["refreshes_scheduled_done"] and c["errors"] == 0
                         and c["expired_uses"] == 0 and c["unknown_token"] == 0})
    return rows


def _signed_ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:+.0f} ms"


def markdown(doc: dict) -> str:
    lines = ["| case | token lifetime | requests | over | failed | OAuth grants | refresher's scheduled refreshes | "
             "expected by the schedule | grants per 10,000 requests | tokens seen by Vertex | expired at use | "
             "oldest token at use | new token first used | old token last used |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in doc["cases"]:
        lifetime = f"{c['lifetime_s'] // 3600} h" if c["lifetime_s"] >= 3600 else f"{c['lifetime_s']} s"
        lines.append(f"| gateway ({c['case']}) | {lifetime} | {c['requests']:,} | {c['duration_s']:.1f} s | "
                     f"{c['errors']} | {c['grants']} | {c['refreshes_scheduled_done']} | "
                     f"{c['expected_by_schedule']} (every {c['schedule_every_s']:g} s) | "
                     f"{c['grants_per_10k']:.1f} | {c['tokens_seen']} | {c['expired_uses']} | "
                     f"{c['max_age_at_use_s']:.2f} s | "
                     f"{_signed_ms(c['new_token_first_use_max_s'])} | {_signed_ms(c['old_token_last_use_max_s'])} |")
    r = doc.get("router")
    if r:
        lines.append(f"| Python smart router, token per request | 1 h | {r['requests']:,} | {r['duration_s']:.1f} s | "
                     f"{r['errors']} | {r['grants']:,} | – | – | {r['grants_per_10k']:,.0f} | – | – | – | – | – |")
    lines += ["", "| case | req/s | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for c in doc["cases"]:
        lines.append(f"| gateway ({c['case']}) | {c['rps']:,.0f} | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} |")
    if r:
        lines.append(f"| smart router, token per request | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
    lines += ["", *verdict_rows(doc["verdicts"])]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB

    short = [c for c in doc["_cases"] if c["lifetime_s"] < 3600]
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.4), gridspec_kw={"width_ratios": [3, 1.3]})
    ax = axes[0]
    if short:
        c = short[0]
        uses = c["_uses"]
        cmap = plt.get_cmap("tab10")
        ax.scatter([u["t"] for u in uses], [u["age"] for u in uses], s=1, c=[cmap(u["token"] % 10) for u in uses],
                   rasterized=True)
        for i, t in enumerate(c["grant_times_s"]):
            ax.axvline(t, color="black", lw=0.8, ls=":", label="grant (token endpoint)" if i == 0 else None)
        ax.axhline(c["lifetime_s"], color="red", lw=1, ls="--", label=f"lifetime {c['lifetime_s']} s: expired above")
        ax.set_ylim(0, c["lifetime_s"] * 1.15)
        ax.set_xlabel("seconds since the load began")
        ax.set_ylabel("age of the token the request carried (s)")
        ax.set_title(f"{c['lifetime_s']} s tokens under load: {c['requests']:,} requests, {c['errors']} failed, "
                     f"{c['grants']} grants = {c['refreshes_scheduled_done']} scheduled refreshes "
                     f"(one colour per token)", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    labels, values = [], []
    for c in doc["_cases"]:
        labels.append(f"gateway\n{c['lifetime_s'] // 3600} h token" if c["lifetime_s"] >= 3600
                      else f"gateway\n{c['lifetime_s']} s token")
        values.append(c["grants_per_10k"])
    if doc.get("router"):
        labels.append("smart router\ntoken/request")
        values.append(doc["router"]["grants_per_10k"])
    colors = ["tab:blue"] * len(doc["_cases"]) + ["tab:orange"]
    bars = ax.bar(range(len(values)), [v if v else 0.5 for v in values],
                  color=[c if v else "none" for c, v in zip(colors, values)],
                  edgecolor=[c for c in colors[:len(values)]], hatch=None)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, (v or 0.5) * 1.15, "0" if not v else f"{v:,.1f}", ha="center",
                fontsize=9)
    ax.set_yscale("log")
    ax.set_ylim(0.3, 10 ** 5)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("OAuth grants per 10,000 requests (log)")
    ax.set_title("grants per 10,000 requests", fontsize=10)
    return save_plot(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests per gateway case")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--short-lifetime", type=int, default=5, help="token lifetime of the rotation case (s)")
    parser.add_argument("--pace-s", type=float, default=20.0, help="spread the rotation case's requests over this")
    parser.add_argument("--router-requests", type=int, default=500,
                        help="requests through the smart router in its token-per-request mode (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "tokens.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    body = make_body()
    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    t0 = time.monotonic()
    print(f"token benchmark: {args.requests:,} requests per case (1 h and {args.short_lifetime} s tokens), "
          f"{args.concurrency} connections; {info['cores']} cores, Envoy {info['envoy']}", file=sys.stderr)
    cases = []
    for name, lifetime, pace in (("1 h token", 3600, 0.0), (f"{args.short_lifetime} s token", args.short_lifetime,
                                                            args.pace_s)):
        c = case(name, lifetime, args.requests, args.concurrency, pace, body)
        cases.append(c)
        print(f"  {name}: {c['requests']:,} requests in {c['duration_s']:.1f} s, {c['errors']} failed, {c['grants']} "
              f"grants, {c['refreshes_scheduled_done']} scheduled refreshes, {c['expired_uses']} expired uses",
              file=sys.stderr)
    router = None
    if args.router_requests:
        router = router_case(args.router_requests, args.concurrency, body, Path(tempfile.mkdtemp(prefix="bench-tokens-")))
        print(f"  smart router, token per request: {router['requests']:,} requests, {router['grants']:,} grants",
              file=sys.stderr)
    info["loadavg_end"] = list(os.getloadavg())
    doc = {"benchmark": "tokens", "started": started.isoformat(timespec="seconds"), "machine": info,
           "command": "python -m bench.tokens " + " ".join(argv if argv is not None else sys.argv[1:]),
           "settings": {"requests": args.requests, "concurrency": args.concurrency,
                        "short_lifetime_s": args.short_lifetime, "pace_s": args.pace_s,
                        "router_requests": args.router_requests, "body_bytes": len(body), "path": MODEL_PATH,
                        "grant_poll_s": POLL_S},
           "cases": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cases], "router": router,
           "_cases": cases}
    doc["verdicts"] = verdicts(doc)
    table = markdown(doc)
    print(table)
    if not args.no_plot:
        print(plot(doc, args.plot), file=sys.stderr)
    doc.pop("_cases")
    doc["markdown"] = table
    doc["wall_s"] = round(time.monotonic() - t0, 1)
    path = write_json(args.out, "tokens", started, doc)
    print(f"results written to {path} ({doc['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
