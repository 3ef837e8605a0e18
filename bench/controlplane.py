"""Control plane: edit-to-ACK with real Envoys, fan-out to simulated ADS clients, build cost.

Three parts, each reported on its own (all in one run):

  (i)   edit -> every Envoy ACKs: a Stack with 2 real Envoys (us-central1, us-east4). Each
        edit rewrites regions.yaml (a policy change: route timeout and outlier detection, so
        clusters, their endpoints and routes all change); the clock runs from the write to the
        last ACK of the new config by either Envoy, read from the control plane's own records
        (ACK times per stream and type, the data behind /debug/clients). SotW and Delta.
  (ii)  fan-out: a control plane process (`python -m control_plane serve`) and, in a separate
        process, N simulated Envoys on grpc.aio (one channel = one connection per client by
        default; each stream its own node id and node metadata region). They walk ADS as Envoy
        does: CDS, ACK, EDS for the EDS clusters (+ SDS for the token secret), ACK, LDS, ACK,
        RDS, ACK; they ACK every push and re-request EDS when an EDS cluster changed. Reported
        per N: time to sync all, time until all ACKed an edit, the control plane's CPU over
        that, and its RSS per connected client.
  (iii) build + serialize: build_resources for one node group + Snapshot.build with a fresh
        Interner, for synthetic configs of M models x R regions (median of several runs);
        also what a reload really does (validate the YAML, then build every region's group).

    python -m bench.controlplane [--parts i,ii,iii] [--edits 20] [--clients 10,100,1000]
                                 [--sizes 10x5,10x20,...] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import datetime as dt
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import NO_MATPLOTLIB, cpu_seconds, machine, pyplot, rss_bytes, verdict_rows, wait_until, write_json  # noqa: E402,E501
from bench.sim_envoy import DeltaSimEnvoy, SimEnvoy  # noqa: E402
from control_plane.xds_types import CLUSTER_TYPE, ROUTE_TYPE  # noqa: E402
from control_plane.xds_types import short as _short  # noqa: E402
from tests.loadgen import percentile  # noqa: E402

SIZES = ((10, 5), (10, 20), (10, 40), (100, 5), (100, 20), (100, 40), (1000, 5), (1000, 20), (1000, 40))
CLIENTS = (10, 100, 1000)
# Two policies an edit toggles between: a route change and a cluster change at once.
EDIT_POLICIES = ({"timeout": "30s", "outlier_detection": {"consecutive_5xx": 5}},
                 {"timeout": "31s", "outlier_detection": {"consecutive_5xx": 6}})


def _ms(seconds: float | None, spec: str = ".1f") -> str:
    return "–" if seconds is None else format(seconds * 1000, spec)


# =========================================================================== (i) real Envoys


def part_edit_to_ack(args: argparse.Namespace, delta: bool) -> dict:
    from tests.harness import write_config
    from tests.stack import Stack

    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1", "us-east4"), delta=delta)
    plane = stack.plane.plane
    loop = stack.plane.loop
    reloads: list[tuple[float, float, bool]] = []  # (start, end, ok): the watcher's reloads that changed the config
    original_reload = plane.reload

    async def timed_reload(reason: str = "file changed") -> bool:
        start, version = time.time(), plane.cache.config.version
        ok = await original_reload(reason)
        if plane.cache.config.version != version:  # not the watcher's idle re-checks
            reloads.append((start, time.time(), ok))
        return ok

    # The product's own watcher (awatch on the directory) calls self.reload(): it now goes
    # through here, so the clock runs from the file write, through the watcher, to the ACKs.
    plane.reload = timed_reload
    edits = []
    try:
        stack.wait_synced(30)

        def records() -> list[dict]:
            return [{"node": s.node_id, "types": {
                t: {"sent": st.sent_version, "acked": st.acked_version, "sent_at": st.sent_at,
                    "acked_at": st.acked_at, "subscribed": st.subscribed}
                for t, st in s.types.items()}} for s in plane.clients.streams()]

        def snapshot() -> list[dict]:
            return loop.run(records)

        for i in range(args.edits):
            before = {r["node"]: r["types"] for r in snapshot()}
            config = copy.deepcopy(stack.config)
            config["policy"] = EDIT_POLICIES[i % 2]
            n_reloads = len(reloads)
            t0 = time.time()
            write_config(stack.config_path, config)
            deadline = time.monotonic() + args.edit_timeout

            def changed_and_synced(recs: list[dict]) -> bool:
                if len(recs) < 2:
                    return False
                for r in recs:
                    old = before.get(r["node"], {})
                    for t in (CLUSTER_TYPE, ROUTE_TYPE):
                        st = r["types"].get(t)
                        if st is None or st["acked"] == old.get(t, {}).get("acked") or st["acked"] != st["sent"]:
                            return False
                    if any(st["subscribed"] and st["acked"] != st["sent"] for st in r["types"].values()):
                        return False
                return True

            recs = snapshot()
            while not changed_and_synced(recs) and time.monotonic() < deadline:
                time.sleep(0.002)
                recs = snapshot()
            complete = changed_and_synced(recs)
            time.sleep(args.quiet)  # late ACKs of the same edit (an EDS re-request) land in the records
            recs = snapshot()
            acks = [st["acked_at"] for r in recs for st in r["types"].values()
                    if st["acked_at"] is not None and st["acked_at"] >= t0]
            sends = [st["sent_at"] for r in recs for st in r["types"].values()
                     if st["sent_at"] is not None and st["sent_at"] >= t0]
            per_envoy = {r["node"]: max((st["acked_at"] for st in r["types"].values()
                                         if st["acked_at"] is not None and st["acked_at"] >= t0), default=None)
                         for r in recs}
            reload = reloads[n_reloads] if len(reloads) > n_reloads else None
            edits.append({
                "edit": i, "complete": complete,
                "write_to_last_ack_s": max(acks) - t0 if complete and acks else None,
                "write_to_reload_start_s": reload[0] - t0 if reload else None,
                "reload_s": reload[1] - reload[0] if reload else None,
                "reload_end_to_first_push_s": min(sends) - reload[1] if reload and sends else None,
                "first_push_to_last_ack_s": max(acks) - min(sends) if acks and sends else None,
                "per_envoy_s": {k: (v - t0 if v else None) for k, v in per_envoy.items()},
                "types_acked": sorted({_short(t) for r in recs for t, st in r["types"].items()
                                       if st["acked_at"] is not None and st["acked_at"] >= t0}),
            })
            stack.config = config
            time.sleep(args.edit_gap)
        envoy_versions = {}
        for region, envoy in stack.envoys.items():
            stats = envoy.stats("^cluster_manager.cds.update_|^listener_manager.lds.update_|"
                                "^http.ingress.rds.vertex.update_")
            envoy_versions[region] = {k: v for k, v in stats.items()
                                      if k.endswith(("update_success", "update_rejected"))}
    finally:
        plane.reload = original_reload
        stack.close()
    done = [e["write_to_last_ack_s"] for e in edits if e["write_to_last_ack_s"] is not None]
    return {
        "mode": "delta" if delta else "sotw", "edits": edits, "envoy_update_stats": envoy_versions,
        "complete": sum(e["complete"] for e in edits), "count": len(edits),
        "p50_s": percentile(done, 50) if done else None, "p99_s": percentile(done, 99) if done else None,
        "max_s": max(done) if done else None,
        "median_parts_s": {k: statistics.median([e[k] for e in edits if e[k] is not None] or [float("nan")])
                           for k in ("write_to_reload_start_s", "reload_s", "reload_end_to_first_push_s",
                                     "first_push_to_last_ack_s")},
    }


# =========================================================================== (ii) simulated clients


def fanout_config(models: int, regions: int, key_path: str) -> dict:
    """A synthetic config for the fan-out test; 127.0.0.x addresses (nothing ever connects)."""
    names = [f"region-{i:02d}" for i in range(regions)]
    return {
        "project": "bench-project",
        "auth": {"credentials": f"service_account:{key_path}"},
        "listener": {"port": 8080},
        "regions": {n: {"address": f"127.0.0.{10 + i}", "port": 443, "tls": False,
                        "failover": [names[(i + k) % regions] for k in range(1, min(2, regions - 1) + 1)]}
                    for i, n in enumerate(names)},
        "models": {f"model-{m:03d}": {**({"default": True} if m == 0 else {}),
                                      "endpoints": {n: str(1_000_000 * (m + 1) + i) for i, n in enumerate(names)}}
                   for m in range(models)},
    }


async def _fanout_clients(address: str, n: int, regions: list[str], per_channel: int, sds: bool, conn,
                          delta: bool = False) -> None:
    import grpc

    loop = asyncio.get_running_loop()
    channels = []
    clients: list[SimEnvoy | DeltaSimEnvoy] = []
    parsed: dict = {}
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    t0 = time.monotonic()
    for i in range(n):
        if i % per_channel == 0:
            channels.append(grpc.aio.insecure_channel(address, options=options))
        kind = DeltaSimEnvoy if delta else SimEnvoy
        clients.append(kind(channels[-1], f"sim-{i:04d}", regions[i % len(regions)], parsed, sds))
    tasks = [asyncio.create_task(c.run()) for c in clients]

    def recv():  # commands from the orchestrator, read off the loop
        return conn.recv() if conn.poll(600) else {"cmd": "stop"}

    async def all_synced(timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.synced.wait() for c in clients)), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    ok = await all_synced(120)
    synced_at = max((c.last_ack_at for c in clients), default=t0)
    conn.send({"event": "synced", "ok": ok, "synced": sum(c.synced.is_set() for c in clients),
               "sync_all_s": synced_at - t0, "errors": [c.error for c in clients if c.error][:5],
               "responses": sum(c.responses for c in clients)})
    while True:
        command = await loop.run_in_executor(None, recv)
        if command["cmd"] == "stop":
            break
        if command["cmd"] == "arm":  # an edit is about to be written; report when every client settled on it
            base = {id(c): dict(c.version) for c in clients}
            responses0 = sum(c.responses for c in clients)
            conn.send({"event": "armed"})
            edit_at = (await loop.run_in_executor(None, recv))["t0"]
            deadline = time.monotonic() + command["timeout"]
            while time.monotonic() < deadline and not all(c.settled_on(base[id(c)]) for c in clients):
                await asyncio.sleep(0.002)
            done_at = time.monotonic()
            settled = [c for c in clients if c.settled_on(base[id(c)])]
            await asyncio.sleep(command["quiet"])  # anything still arriving for this edit
            times = sorted(c.last_ack_at - edit_at for c in settled)
            conn.send({"event": "settled", "settled": len(settled), "of": n, "done_at": done_at,
                       "all_s": max(times) if len(settled) == n else None,
                       "p50_s": percentile(times, 50) if times else None,
                       "p99_s": percentile(times, 99) if times else None,
                       "responses": sum(c.responses for c in clients) - responses0,
                       "errors": [c.error for c in clients if c.error][:5]})
    for c in clients:
        await c.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


def _fanout_process(address: str, n: int, regions: list[str], per_channel: int, sds: bool, conn,
                    delta: bool = False) -> None:
    gc.disable()  # as Envoy has no GC pauses; a few thousand objects per client, bounded run
    try:
        asyncio.run(_fanout_clients(address, n, regions, per_channel, sds, conn, delta))
    finally:
        conn.close()


def part_fanout(args: argparse.Namespace, n: int, workdir: Path, server: str = "product", mode: str = "sotw") -> dict:
    """server: "product" (`python -m control_plane serve`) or "floor" (bench/xds_floor.py);
    mode: the simulated Envoys' xDS variant, "sotw" or "delta"."""
    from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key
    from tests.harness import LoopThread, free_port, write_config

    loop = LoopThread()
    tokens = FakeTokenServer(expires_in=3600)
    loop.call(tokens.start())
    key = write_service_account_key(workdir / f"key-{n}.json", tokens.token_uri)
    config = fanout_config(args.fanout_models, args.fanout_regions, str(key))
    config_path = write_config(workdir / f"regions-{n}.yaml", config)
    xds_port, admin_port = free_port(), free_port()
    log = open(workdir / f"control-plane-{n}.log", "ab")
    profile = ["-m", "cProfile", "-o", f"{args.profile_cp}-{n}.prof"] if args.profile_cp else []
    started_at = time.monotonic()
    command = ["-m", "control_plane", "--log-level", "INFO", "serve"] if server == "product" else \
        ["-m", "bench.xds_floor"]
    plane = subprocess.Popen([sys.executable, *profile, *command, "--config",
                              str(config_path), "--xds-port", str(xds_port), "--admin-port", str(admin_port)],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = None
    out: dict = {"clients": n, "server": server, "mode": mode}
    try:
        def healthy() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=2) as resp:
                return json.load(resp)["status"] == "ok"

        wait_until(healthy, 60, "the control plane's first token", interval=0.01)
        out["start_to_healthy_s"] = time.monotonic() - started_at
        time.sleep(0.5)
        rss0 = rss_bytes(plane.pid)
        cpu0 = sum(cpu_seconds([plane.pid]))
        proc = ctx.Process(target=_fanout_process, args=(f"127.0.0.1:{xds_port}", n, list(config["regions"]),
                                                          args.streams_per_channel, not args.no_sds, child,
                                                          mode == "delta"))
        proc.start()
        if not parent.poll(180):
            raise TimeoutError(f"{n} simulated clients did not sync in 180 s")
        synced = parent.recv()
        cpu1 = sum(cpu_seconds([plane.pid]))
        time.sleep(1.0)
        rss1 = rss_bytes(plane.pid)
        out.update({"sync": synced, "rss_before_mb": rss0 / 2**20, "rss_synced_mb": rss1 / 2**20,
                    "rss_per_client_kb": (rss1 - rss0) / n / 1024, "sync_cpu_s": cpu1 - cpu0})
        edits = []
        edited = copy.deepcopy(config)
        kinds = getattr(args, "edit_kinds", ("policy",))
        for i in range(args.fanout_edits):
            parent.send({"cmd": "arm", "timeout": 60, "quiet": args.quiet})
            assert parent.recv()["event"] == "armed"
            cpu_a = cpu_seconds([plane.pid])
            kind = kinds[i % len(kinds)]
            if kind == "policy":  # every route and region cluster changes
                edited["policy"] = EDIT_POLICIES[(i // len(kinds)) % 2]
            else:  # "model": one model's endpoint id in one region (the common operator edit)
                edited["models"]["model-001"]["endpoints"][next(iter(edited["regions"]))] = str(9_000_000 + i)
            t0 = time.monotonic()
            write_config(config_path, edited)
            parent.send({"t0": t0})
            if not parent.poll(90):
                raise TimeoutError("no report from the simulated clients")
            report = parent.recv()
            report["kind"] = kind
            cpu_b = cpu_seconds([plane.pid])
            busy = report["done_at"] - t0
            report.update({"cp_cpu_s": (cpu_b[0] + cpu_b[1]) - (cpu_a[0] + cpu_a[1]),
                           "cp_user_s": cpu_b[0] - cpu_a[0], "cp_sys_s": cpu_b[1] - cpu_a[1], "window_s": busy})
            report["cp_cpu_share"] = report["cp_cpu_s"] / busy if busy > 0 else None
            edits.append(report)
            time.sleep(0.3)
        out["edits"] = edits
        out["rss_after_edits_mb"] = rss_bytes(plane.pid) / 2**20
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as resp:
            out["healthz_clients"] = json.load(resp)["clients"]
        parent.send({"cmd": "stop"})
        proc.join(60)
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
        plane.terminate()
        try:
            plane.wait(15)
        except subprocess.TimeoutExpired:
            plane.kill()
            plane.wait(5)
        loop.call(tokens.stop())
        loop.close()
        out["token_grants"] = tokens.grants
    all_s = [e["all_s"] for e in out.get("edits", []) if e.get("all_s") is not None]
    out["edit_all_s_median"] = statistics.median(all_s) if all_s else None
    out["edit_all_s_max"] = max(all_s) if all_s else None
    out["cp_cpu_s_median"] = statistics.median([e["cp_cpu_s"] for e in out.get("edits", [])] or [float("nan")])
    return out


# =========================================================================== (iv) big configs


BIG_SIZES = ((100, 40), (1000, 5))


def part_big(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Targets for large configs: `validate` (a process, as an operator runs it), `serve` from
    process start to a connected client's full set, and an edit (the file written) to every
    client ACKed. One simulated Envoy per region (at most --big-clients)."""
    from tests.harness import write_config

    rows = []
    for models, regions in args.big_sizes:
        path = write_config(workdir / f"big-{models}x{regions}.yaml", fanout_config(models, regions, "/nonexistent"))
        walls = []
        for _ in range(3):
            t0 = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "control_plane", "validate", str(path)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            walls.append(time.monotonic() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"validate failed: {done.stdout}{done.stderr}")
        # Edits alternate: the global policy (every route and region cluster changes: a full
        # rebuild) and one model's endpoint id (the rest is taken over from the config before).
        sub = argparse.Namespace(**{**vars(args), "fanout_models": models, "fanout_regions": regions,
                                    "fanout_edits": 2 * args.big_edits, "edit_kinds": ("policy", "model")})
        fan = part_fanout(sub, min(regions, args.big_clients), workdir)
        row = {"models": models, "regions": regions, "validate_s": statistics.median(walls),
               "start_to_healthy_s": fan["start_to_healthy_s"], "first_sync_s": fan["sync"]["sync_all_s"],
               "start_to_full_set_s": fan["start_to_healthy_s"] + fan["sync"]["sync_all_s"],
               "clients": fan["clients"], "rss_synced_mb": fan["rss_synced_mb"]}
        for kind in ("policy", "model"):
            times = [e["all_s"] for e in fan.get("edits", []) if e["kind"] == kind]
            done = [t for t in times if t is not None]
            row[f"edit_{kind}_s_median"] = statistics.median(done) if done else None
            row[f"edit_{kind}_s_max"] = max(done) if len(done) == len(times) and done else None
        rows.append(row)
        print(f"  (iv) {models}x{regions}: validate {row['validate_s']:.2f} s, start -> full set "
              f"{row['start_to_full_set_s']:.2f} s, edit -> all ACKed (worst): global policy "
              f"{_ms(row['edit_policy_s_max'], '.0f')} ms, one model {_ms(row['edit_model_s_max'], '.0f')} ms",
              file=sys.stderr)
    return rows


# =========================================================================== (iii) build cost


def synthetic_config(models: int, regions: int, failover: int) -> dict:
    names = [f"region-{i:02d}" for i in range(regions)]
    return {
        "project": "bench-project",
        "listener": {"port": 8080},
        "regions": {n: {"address": f"10.{i // 250}.{i % 250}.10", "port": 443, "tls": True,
                        "failover": [names[(i + k) % regions] for k in range(1, min(failover, regions - 1) + 1)]}
                    for i, n in enumerate(names)},
        "models": {f"model-{m:04d}": {**({"default": True} if m == 0 else {}),
                                      "endpoints": {n: str(1_000_000 * (m + 1) + i) for i, n in enumerate(names)}}
                   for m in range(models)},
    }


def part_build(args: argparse.Namespace) -> list[dict]:
    from control_plane.cache import SnapshotCache
    from control_plane.config import RegionConfig, parse_config
    from control_plane.resources import NodeGroup, build_resources
    from control_plane.snapshot import Interner, Snapshot

    rows = []
    for models, regions in args.sizes:
        data = synthetic_config(models, regions, args.failover)
        config = RegionConfig.model_validate(data)
        group = NodeGroup("region-00", config.listener.address, config.listener.port)
        build_resources(config, group)  # warm imports and caches
        build_t, snap_t, sizes = [], [], {}
        budget = time.monotonic() + args.build_budget
        for run in range(args.runs):
            gc.collect()
            t = time.perf_counter()
            built = build_resources(config, group)
            t1 = time.perf_counter()
            snapshot = Snapshot.build(built, Interner())
            t2 = time.perf_counter()
            build_t.append(t1 - t)
            snap_t.append(t2 - t1)
            if run >= 2 and time.monotonic() > budget:
                break
        sizes = {_short(k): len(v) for k, v in snapshot.resources.items() if v}
        wire = sum(len(r.any_bytes) for r in snapshot.all())
        row = {"models": models, "regions": regions, "failover": args.failover, "runs": len(build_t),
               "build_ms": statistics.median(build_t) * 1000, "serialize_ms": statistics.median(snap_t) * 1000,
               "total_ms": statistics.median([a + b for a, b in zip(build_t, snap_t)]) * 1000,
               "resources": sizes, "wire_kb": wire / 1024}
        # A reload: YAML parse + validation, then every region's default group (SnapshotCache._prebuild).
        text = yaml.safe_dump(data, sort_keys=False)
        row["yaml_kb"] = len(text) / 1024
        est_group = row["total_ms"] / 1000
        if est_group * regions <= args.reload_budget:
            gc.collect()
            t = time.perf_counter()
            parsed = parse_config(text)
            t1 = time.perf_counter()
            SnapshotCache(parsed)
            t2 = time.perf_counter()
            row.update({"validate_ms": (t1 - t) * 1000, "all_groups_ms": (t2 - t1) * 1000, "reload_estimated": False})
        else:
            gc.collect()
            t = time.perf_counter()
            parse_config(text)
            row.update({"validate_ms": (time.perf_counter() - t) * 1000,
                        "all_groups_ms": row["total_ms"] * regions, "reload_estimated": True})
        row["reload_ms"] = row["validate_ms"] + row["all_groups_ms"]
        rows.append(row)
        print(f"  (iii) {models:5d} models x {regions:2d} regions: build {row['build_ms']:7.1f} ms + serialize "
              f"{row['serialize_ms']:6.1f} ms = {row['total_ms']:7.1f} ms per group; reload "
              f"{row['reload_ms'] / 1000:6.2f} s{' (est.)' if row['reload_estimated'] else ''}", file=sys.stderr)
    return rows


# =========================================================================== output


def _floor_ratios(product: dict, floor: dict) -> dict:
    edit = (product["edit_all_s_median"] / floor["edit_all_s_median"]
            if product.get("edit_all_s_median") and floor.get("edit_all_s_median") else None)
    return {"sync": product["sync"]["sync_all_s"] / floor["sync"]["sync_all_s"], "edit": edit}


def _fmt_ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def verdicts(doc: dict) -> list[dict]:
    rows = []
    for r in doc.get("edit_to_ack", []):
        if r["p99_s"] is not None:
            rows.append({"target": f"config edit -> both Envoys ACK, p99 ({r['mode']}, {r['count']} edits)",
                         "goal": "< 250 ms", "text": f"{r['p99_s'] * 1000:.0f} ms (p50 {r['p50_s'] * 1000:.0f})",
                         "met": r["p99_s"] < 0.25 and r["complete"] == r["count"]})
    fan = {f["clients"]: f for f in doc.get("fanout", []) if f.get("mode", "sotw") == "sotw"}
    if 1000 in fan or fan:
        big = fan.get(1000) or fan[max(fan)]
        v = big["edit_all_s_max"]
        rows.append({"target": f"edit -> all {big['clients']:,} simulated clients ACKed (worst of "
                               f"{len(big.get('edits', []))})", "goal": "< 1 s",
                     "text": f"{v:.2f} s" if v is not None else "incomplete", "met": v is not None and v < 1.0})
        # The largest count: fixed costs (allocator arenas, first-use caches) weigh least there.
        per = big["rss_per_client_kb"]
        others = ", ".join(f"{f['rss_per_client_kb']:.0f} KB at {n:,}" for n, f in sorted(fan.items()) if f is not big)
        rows.append({"target": f"control-plane RSS per connected client ({big['clients']:,} clients)",
                     "goal": "< 64 KB", "text": f"{per:.0f} KB" + (f" ({others})" if others else ""),
                     "met": per < 64})
    products = {(f["clients"], f.get("mode", "sotw")): f for f in doc.get("fanout", [])}
    floors = {(f["clients"], f.get("mode", "sotw")): f for f in doc.get("floor", [])}
    for mode in ("sotw", "delta"):
        n = max((c for c, m in set(products) & set(floors) if m == mode), default=None)
        if n is None:
            continue
        product = products[n, mode]
        r = _floor_ratios(product, floors[n, mode])
        rows.append({"target": f"edit -> all {n:,} ACKed ({mode}), against the trivial floor server (median)",
                     "goal": "≤ 1.2x", "text": _fmt_ratio(r["edit"]), "met": r["edit"] is not None and r["edit"] <= 1.2})
        rows.append({"target": f"first full set to all {n:,} ({mode}), against the trivial floor server",
                     "goal": "≤ 1.2x", "text": _fmt_ratio(r["sync"]), "met": r["sync"] <= 1.2})
        if mode == "delta":
            per = product["rss_per_client_kb"]
            rows.append({"target": f"control-plane RSS per connected client ({n:,} {mode} clients)",
                         "goal": "< 64 KB", "text": f"{per:.0f} KB", "met": per < 64})
    for g in doc.get("big", []):
        size = f"{g['models']:,} models x {g['regions']} regions"
        rows.append({"target": f"validate, {size}", "goal": "< 1 s", "text": f"{g['validate_s']:.2f} s",
                     "met": g["validate_s"] < 1.0})
        rows.append({"target": f"serve start -> a connected Envoy's full set, {size}", "goal": "< 3 s",
                     "text": f"{g['start_to_full_set_s']:.2f} s", "met": g["start_to_full_set_s"] < 3.0})
        for kind, what in (("model", "one model's endpoint id"), ("policy", "the global policy")):
            worst = g[f"edit_{kind}_s_max"]
            rows.append({"target": f"edit of {what} (file written) -> all {g['clients']} Envoys ACKed, {size}",
                         "goal": "< 1 s", "text": f"{worst:.2f} s" if worst is not None else "incomplete",
                         "met": worst is not None and worst < 1.0})
    for b in doc.get("build", []):
        if (b["models"], b["regions"]) == (100, 40):
            rows.append({"target": "build + serialize, 100 models x 40 regions, one node group", "goal": "< 100 ms",
                         "text": f"{b['total_ms']:.0f} ms", "met": b["total_ms"] < 100})
    return rows


def markdown(doc: dict) -> str:
    lines: list[str] = []
    if doc.get("edit_to_ack"):
        lines += ["(i) Config edit -> every Envoy ACKed (2 real Envoys):", "",
                  "| xDS | edits | complete | p50 ms | p99 ms | max ms | write -> reload starts | reload | "
                  "reload -> first push | first push -> last ACK |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in doc["edit_to_ack"]:
            m = r["median_parts_s"]
            lines.append(f"| {r['mode']} | {r['count']} | {r['complete']} | {_ms(r['p50_s'])} | {_ms(r['p99_s'])} | "
                         f"{_ms(r['max_s'])} | {_ms(m['write_to_reload_start_s'])} | {_ms(m['reload_s'])} | "
                         f"{_ms(m['reload_end_to_first_push_s'])} | {_ms(m['first_push_to_last_ack_s'])} |")
        lines += ["", "(the last four columns: medians over the edits, ms)", ""]
    if doc.get("fanout"):
        lines += ["(ii) Simulated ADS clients (separate process; one connection each):", "",
                  "| xDS | clients | initial sync of all | edit -> all ACKed (median / worst) | client p50 / p99 | "
                  "control-plane CPU per edit | CP CPU busy | responses per edit | RSS before -> synced | "
                  "RSS per client |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for f in doc["fanout"]:
            e = f.get("edits", [])
            p50 = statistics.median([x["p50_s"] for x in e if x.get("p50_s") is not None] or [float("nan")])
            p99 = statistics.median([x["p99_s"] for x in e if x.get("p99_s") is not None] or [float("nan")])
            share = statistics.median([x["cp_cpu_share"] for x in e if x.get("cp_cpu_share")] or [float("nan")])
            responses = statistics.median([x["responses"] for x in e] or [0])
            lines.append(
                f"| {f.get('mode', 'sotw')} | {f['clients']:,} | {f['sync']['sync_all_s']:.2f} s | "
                f"{_ms(f['edit_all_s_median'], '.0f')} / "
                f"{_ms(f['edit_all_s_max'], '.0f')} ms | {_ms(p50, '.0f')} / {_ms(p99, '.0f')} ms | "
                f"{_ms(f['cp_cpu_s_median'], '.0f')} ms | {100 * share:.0f}% | {responses:,.0f} | "
                f"{f['rss_before_mb']:.1f} -> {f['rss_synced_mb']:.1f} MB | {f['rss_per_client_kb']:.1f} KB |")
        lines.append("")
    floors = {(f["clients"], f.get("mode", "sotw")): f for f in doc.get("floor", [])}
    if floors:
        lines += ["(ii) The product against the trivial floor server (bench/xds_floor.py), same run, same clients:",
                  "", "| xDS | clients | initial sync: product / floor | ratio | edit -> all ACKed (median): product / "
                  "floor | ratio | RSS per client: product / floor |", "|---|---:|---:|---:|---:|---:|---:|"]
        for f in doc["fanout"]:
            fl = floors.get((f["clients"], f.get("mode", "sotw")))
            if fl is None:
                continue
            r = _floor_ratios(f, fl)
            lines.append(f"| {f.get('mode', 'sotw')} | {f['clients']:,} | "
                         f"{f['sync']['sync_all_s']:.2f} / {fl['sync']['sync_all_s']:.2f} s | "
                         f"{r['sync']:.2f}x | {_ms(f['edit_all_s_median'], '.0f')} / "
                         f"{_ms(fl['edit_all_s_median'], '.0f')} ms | {_fmt_ratio(r['edit'])} | "
                         f"{f['rss_per_client_kb']:.1f} / {fl['rss_per_client_kb']:.1f} KB |")
        lines.append("")
    if doc.get("big"):
        lines += ["(iv) Large configs (wall clock; one simulated Envoy per region):", "",
                  "| models x regions | validate | serve start -> healthy | -> full set | edit -> all ACKed, "
                  "one model (median / worst) | edit -> all ACKed, global policy (median / worst) | RSS synced |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for g in doc["big"]:
            lines.append(f"| {g['models']:,} x {g['regions']} | {g['validate_s']:.2f} s | "
                         f"{g['start_to_healthy_s']:.2f} s | {g['start_to_full_set_s']:.2f} s | "
                         f"{_ms(g['edit_model_s_median'], '.0f')} / {_ms(g['edit_model_s_max'], '.0f')} ms | "
                         f"{_ms(g['edit_policy_s_median'], '.0f')} / {_ms(g['edit_policy_s_max'], '.0f')} ms | "
                         f"{g['rss_synced_mb']:.0f} MB |")
        lines.append("")
    if doc.get("build"):
        lines += ["(iii) Build + serialize for one node group (median), and a whole reload:", "",
                  "| models x regions | clusters / endpoints / routes | serialized | build ms | serialize ms | "
                  "total ms | reload: validate YAML | reload: all region groups | reload total |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for b in doc["build"]:
            res = b["resources"]
            est = " (est.)" if b["reload_estimated"] else ""
            lines.append(f"| {b['models']:,} x {b['regions']} | {res.get('Cluster', 0):,} / "
                         f"{res.get('ClusterLoadAssignment', 0):,} / 1 | {b['wire_kb']:,.0f} KB | "
                         f"{b['build_ms']:.1f} | {b['serialize_ms']:.1f} | {b['total_ms']:.1f} | "
                         f"{b['validate_ms']:,.0f} ms | {b['all_groups_ms']:,.0f} ms{est} | "
                         f"{b['reload_ms'] / 1000:.2f} s{est} |")
        lines.append("")
    lines += verdict_rows(doc["verdicts"])
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> str:
    plt = pyplot()
    if plt is None:
        return NO_MATPLOTLIB

    panels = [p for p in ("edit_to_ack", "fanout", "build") if doc.get(p)]
    if not panels:  # e.g. --parts iv alone: its figures are in the tables
        return "no plot for these parts"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "edit_to_ack":
            for r, color in zip(doc["edit_to_ack"], ("tab:blue", "tab:orange")):
                xs = [e["edit"] for e in r["edits"] if e["write_to_last_ack_s"] is not None]
                ys = [e["write_to_last_ack_s"] * 1000 for e in r["edits"] if e["write_to_last_ack_s"] is not None]
                ax.plot(xs, ys, "o-", ms=3, color=color, label=f"{r['mode']}: p50 {_ms(r['p50_s'], '.0f')}, "
                                                              f"p99 {_ms(r['p99_s'], '.0f')} ms")
                rs = [(e["edit"], e["write_to_reload_start_s"] * 1000) for e in r["edits"]
                      if e["write_to_reload_start_s"] is not None]
                ax.plot([x for x, _ in rs], [y for _, y in rs], ":", color=color, lw=1,
                        label=f"{r['mode']}: write -> reload starts")
            ax.axhline(250, color="black", ls="--", lw=1, label="target p99 250 ms")
            ax.set_ylim(bottom=0)
            ax.set_xlabel("edit #")
            ax.set_ylabel("ms from the file write")
            ax.set_title("(i) edit -> both real Envoys ACKed", fontsize=10)
        elif panel == "fanout":
            fan = [f for f in doc["fanout"] if f.get("mode", "sotw") == "sotw"]
            xs = [f["clients"] for f in fan]
            ax.plot(xs, [(f["edit_all_s_max"] or float("nan")) * 1000 for f in fan], "o-", label="edit -> all ACKed (worst)")
            ax.plot(xs, [(f["edit_all_s_median"] or float("nan")) * 1000 for f in fan], "o--", label="(median)")
            ax.plot(xs, [f["sync"]["sync_all_s"] * 1000 for f in fan], "s:", label="initial sync of all")
            ax.axhline(1000, color="black", ls="--", lw=1, label="target 1 s at 1,000")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("simulated ADS clients")
            ax.set_ylabel("ms")
            ax2 = ax.twinx()
            ax2.bar(xs, [f["rss_per_client_kb"] for f in fan], width=[x * 0.3 for x in xs], alpha=0.2,
                    color="tab:green")
            ax2.set_ylabel("RSS per client, KB (green bars)", color="tab:green")
            ax2.axhline(64, color="tab:green", ls=":", lw=1)
            ax.set_zorder(ax2.get_zorder() + 1)  # lines and legend above the bars
            ax.patch.set_visible(False)
            ax.set_title("(ii) fan-out to simulated Envoys", fontsize=10)
        else:
            by_models: dict[int, list] = {}
            for b in doc["build"]:
                by_models.setdefault(b["models"], []).append(b)
            for models, bs in sorted(by_models.items()):
                ax.plot([b["regions"] for b in bs], [b["total_ms"] for b in bs], "o-", label=f"{models:,} models: one group")
                ax.plot([b["regions"] for b in bs], [b["reload_ms"] for b in bs], "x:", label=f"{models:,} models: reload")
            ax.axhline(100, color="black", ls="--", lw=1, label="target 100 ms (100 x 40)")
            ax.set_yscale("log")
            ax.set_xlabel("regions")
            ax.set_ylabel("ms")
            ax.set_title("(iii) build + serialize", fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(f"Control plane; {doc['machine']['cores']} shared cores, Python {doc['machine']['python']}",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot written to {path}"


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",") if item.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.controlplane", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="i,ii,iii", help="which parts: i (real Envoys), ii (fan-out), iii (build), iv (large configs)")
    parser.add_argument("--edits", type=int, default=20, help="(i) edits per xDS mode")
    parser.add_argument("--modes", default="sotw,delta", help="(i) xDS modes of the real Envoys")
    parser.add_argument("--edit-timeout", type=float, default=10.0)
    parser.add_argument("--edit-gap", type=float, default=0.2, help="pause between edits (s)")
    parser.add_argument("--quiet", type=float, default=0.3,
                        help="after an edit is ACKed, wait this long for late ACKs of the same edit")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="(ii) simulated client counts")
    parser.add_argument("--fanout-edits", type=int, default=3, help="(ii) edits per client count")
    parser.add_argument("--fanout-models", type=int, default=10)
    parser.add_argument("--fanout-regions", type=int, default=5)
    parser.add_argument("--streams-per-channel", type=int, default=1,
                        help="(ii) ADS streams per gRPC channel (1: one TCP connection per client, as Envoys)")
    parser.add_argument("--profile-cp", metavar="PREFIX",
                        help="(ii) run the control plane under cProfile, writing PREFIX-<clients>.prof (slows it)")
    parser.add_argument("--fanout-modes", default="sotw,delta", help="(ii) xDS variants of the simulated clients")
    parser.add_argument("--no-floor", action="store_true",
                        help="(ii) skip the trivial floor server (bench/xds_floor.py) measured beside the product")
    parser.add_argument("--no-sds", action="store_true", help="(ii) clients do not subscribe to the token secret")
    parser.add_argument("--sizes", default=",".join(f"{m}x{r}" for m, r in SIZES), help="(iii) MODELSxREGIONS,...")
    parser.add_argument("--failover", type=int, default=2, help="(iii) failover regions per region")
    parser.add_argument("--runs", type=int, default=5, help="(iii) runs per size (median)")
    parser.add_argument("--build-budget", type=float, default=4.0, help="(iii) seconds per size before fewer runs")
    parser.add_argument("--reload-budget", type=float, default=6.0,
                        help="(iii) measure a whole reload only if estimated under this many seconds")
    parser.add_argument("--big-sizes", default=",".join(f"{m}x{r}" for m, r in BIG_SIZES),
                        help="(iv) MODELSxREGIONS,... for the large-config targets")
    parser.add_argument("--big-clients", type=int, default=40, help="(iv) simulated Envoys at most")
    parser.add_argument("--big-edits", type=int, default=3, help="(iv) edits per size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "controlplane.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.sizes = _parse_sizes(args.sizes)
    args.big_sizes = _parse_sizes(args.big_sizes)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]

    started = dt.datetime.now(dt.timezone.utc)
    info = machine()
    info["grpcio"] = __import__("grpc").__version__
    info["protobuf"] = __import__("google.protobuf").protobuf.__version__
    t_start = time.monotonic()
    print(f"control-plane benchmark: parts {sorted(parts)}; {info['cores']} cores, {info['cpu']}, "
          f"Python {info['python']}, Envoy {info['envoy']}", file=sys.stderr)
    doc: dict = {"benchmark": "controlplane", "started": started.isoformat(timespec="seconds"), "machine": info,
                 "command": "python -m bench.controlplane " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "settings": {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items()},
                 "edit_policies": EDIT_POLICIES}
    if "iii" in parts:
        doc["build"] = part_build(args)
    if "i" in parts:
        doc["edit_to_ack"] = []
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            r = part_edit_to_ack(args, delta=mode == "delta")
            doc["edit_to_ack"].append(r)
            print(f"  (i) {mode}: {r['complete']}/{r['count']} edits complete, p50 {_ms(r['p50_s'])} ms, "
                  f"p99 {_ms(r['p99_s'])} ms", file=sys.stderr)
    if "ii" in parts:
        doc["fanout"], doc["floor"] = [], []
        workdir = Path(tempfile.mkdtemp(prefix="bench-controlplane-"))
        modes = [m.strip() for m in args.fanout_modes.split(",") if m.strip()]
        for mode, n in [(m, n) for m in modes for n in clients]:
            for server in ("product", "floor") if not args.no_floor else ("product",):
                f = part_fanout(args, n, workdir, server, mode)
                doc["fanout" if server == "product" else "floor"].append(f)
                print(f"  (ii) {server:7s} {mode:5s} {n:5d} clients: sync {f['sync']['sync_all_s']:.2f} s, edit -> all ACKed "
                      f"{_ms(f['edit_all_s_median'], '.0f')} / {_ms(f['edit_all_s_max'], '.0f')} ms (median/worst), "
                      f"RSS/client {f['rss_per_client_kb']:.1f} KB, CPU/edit {_ms(f['cp_cpu_s_median'], '.0f')} ms",
                      file=sys.stderr)
    if "iv" in parts:
        doc["big"] = part_big(args, Path(tempfile.mkdtemp(prefix="bench-controlplane-big-")))
    info["loadavg_end"] = list(os.getloadavg())
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    doc["verdicts"] = verdicts(doc)
    table = markdown(doc)
    print(table)
    if not args.no_plot:
        print(plot(doc, args.plot), file=sys.stderr)
    doc["markdown"] = table
    path = write_json(args.out, "controlplane", started, doc)
    print(f"results written to {path} ({doc['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
