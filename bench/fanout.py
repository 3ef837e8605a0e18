"""bench/controlplane.py parts (ii) and (iv): simulated Envoys (bench/sim_envoy.py) against a
control plane process, the product (`python -m control_plane serve`) or the trivial floor
server (bench/xds_floor.py), and large configs.

(ii) For each client count and xDS variant the same simulated Envoys connect to the product
and then to the floor; with --fanout-repeats N that pair is run N times in turn, and each
figure reported is the median over the N runs (the machine is shared: one pair can land on a
busy moment).
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import copy
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    control_plane_healthy,
    cpu_seconds,
    cpu_times,
    rss_bytes,
    stop_process,
    wait_until,
)
from bench.sim_envoy import DeltaSimEnvoy, SimEnvoy  # noqa: E402
from control_plane.lab.loadgen import percentile  # noqa: E402

# Two policies an edit toggles between: a route change and a cluster change at once.
EDIT_POLICIES = ({"timeout": "30s", "outlier_detection": {"consecutive_5xx": 5}},
                 {"timeout": "31s", "outlier_detection": {"consecutive_5xx": 6}})


def _ms(seconds: float | None, spec: str = ".1f") -> str:
    return "–" if seconds is None else format(seconds * 1000, spec)


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
            # Parsed clusters are shared by this process's clients within an edit, not across
            # edits: an edit back to an earlier config would find them all parsed already.
            parsed.clear()
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
    from control_plane.lab.harness import LoopThread, free_port, write_config

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
    out: dict = {"clients": n, "server": server, "mode": mode, "loadavg_start": list(os.getloadavg())}
    try:
        wait_until(lambda: control_plane_healthy(admin_port), 60, "the control plane's first token", interval=0.01)
        out["start_to_healthy_s"] = time.monotonic() - started_at
        time.sleep(0.5)
        rss0 = rss_bytes(plane.pid)
        cpu0, loop0 = sum(cpu_seconds([plane.pid])), _loop_cpu(plane.pid)
        proc = ctx.Process(target=_fanout_process, args=(f"127.0.0.1:{xds_port}", n, list(config["regions"]),
                                                          args.streams_per_channel, not args.no_sds, child,
                                                          mode == "delta"))
        proc.start()
        if not parent.poll(180):
            raise TimeoutError(f"{n} simulated clients did not sync in 180 s")
        synced = parent.recv()
        cpu1, loop1 = sum(cpu_seconds([plane.pid])), _loop_cpu(plane.pid)
        time.sleep(1.0)
        rss1 = rss_bytes(plane.pid)
        out.update({"sync": synced, "rss_before_mb": rss0 / 2**20, "rss_synced_mb": rss1 / 2**20,
                    "rss_per_client_kb": (rss1 - rss0) / n / 1024, "sync_cpu_s": cpu1 - cpu0,
                    "sync_loop_cpu_s": loop1 - loop0})
        edits = []
        edited = copy.deepcopy(config)
        kinds = getattr(args, "edit_kinds", ("policy",))
        for i in range(args.fanout_edits):
            parent.send({"cmd": "arm", "timeout": 60, "quiet": args.quiet})
            assert parent.recv()["event"] == "armed"
            cpu_a, loop_a = cpu_seconds([plane.pid]), _loop_cpu(plane.pid)
            kind = kinds[i % len(kinds)]
            if kind == "policy":  # the global policy: every route and region cluster changes
                edited["policy"] = EDIT_POLICIES[(i // len(kinds)) % 2]
            else:  # "model": one model's policy (its routes and clusters in every region; the rest is kept)
                edited["models"]["model-001"]["policy"] = {"timeout": f"{40 + i}s",
                                                          "outlier_detection": {"consecutive_5xx": 7 + i}}
            text = yaml.safe_dump(edited, sort_keys=False)  # (as write_config; 0.2-0.3 s at 1,000 models: not timed)
            t0 = time.monotonic()  # from the file write
            config_path.write_text(text)
            parent.send({"t0": t0})
            if not parent.poll(90):
                raise TimeoutError("no report from the simulated clients")
            report = parent.recv()
            report["kind"] = kind
            cpu_b, loop_b = cpu_seconds([plane.pid]), _loop_cpu(plane.pid)
            busy = report["done_at"] - t0
            report.update({"cp_cpu_s": (cpu_b[0] + cpu_b[1]) - (cpu_a[0] + cpu_a[1]),
                           "cp_user_s": cpu_b[0] - cpu_a[0], "cp_sys_s": cpu_b[1] - cpu_a[1], "window_s": busy,
                           "cp_loop_cpu_s": loop_b - loop_a})
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
        stop_process(plane, 15)
        loop.call(tokens.stop())
        loop.close()
        out["token_grants"] = tokens.grants
    all_s = [e["all_s"] for e in out.get("edits", []) if e.get("all_s") is not None]
    out["edit_all_s_median"] = statistics.median(all_s) if all_s else None
    out["edit_all_s_max"] = max(all_s) if all_s else None
    out["cp_cpu_s_median"] = statistics.median([e["cp_cpu_s"] for e in out.get("edits", [])] or [float("nan")])
    return out


def _loop_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the process's main thread: the control plane's event loop."""
    user, system = cpu_times(f"{pid}/task/{pid}")  # (the same stat format per thread)
    return user + system


_MEDIANS = ("rss_before_mb", "rss_synced_mb", "rss_per_client_kb", "sync_cpu_s", "edit_all_s_median",
            "edit_all_s_max", "cp_cpu_s_median")


def median_run(runs: list[dict]) -> dict:
    """One row from repeated runs of part_fanout: each figure the median over the runs, the
    runs' own figures under "runs"."""
    if len(runs) == 1:
        return runs[0]
    out = {**runs[0], "sync": {**runs[0]["sync"]}, "edits": [e for r in runs for e in r.get("edits", [])]}
    out["sync"]["sync_all_s"] = statistics.median(r["sync"]["sync_all_s"] for r in runs)
    for key in _MEDIANS:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    out["runs"] = [{"sync_all_s": r["sync"]["sync_all_s"], "loadavg_start": r["loadavg_start"],
                    **{k: r.get(k) for k in _MEDIANS}} for r in runs]
    return out


# =========================================================================== (iv) big configs


BIG_SIZES = ((100, 40), (1000, 5))


def part_big(args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Targets for large configs: `validate` (a process, as an operator runs it), `serve` from
    process start to a connected client's full set, and an edit (the file written) to every
    client ACKed. One simulated Envoy per region (at most --big-clients)."""
    from control_plane.lab.harness import write_config

    rows = []
    # As installed (pip compiles the package's bytecode): a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every edited module again in each timed process.
    compileall.compile_dir(str(ROOT / "control_plane"), quiet=1)
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
        # Edits alternate: the global policy (a full rebuild) and one model's policy (the other
        # models' resources are taken over from the build before: Build.inherit).
        sub = argparse.Namespace(**{**vars(args), "fanout_models": models, "fanout_regions": regions,
                                    "fanout_edits": 2 * args.big_edits, "edit_kinds": ("policy", "model")})
        fan = part_fanout(sub, min(regions, args.big_clients), workdir, mode=getattr(args, "big_mode", "sotw"))
        row = {"models": models, "regions": regions, "validate_s": statistics.median(walls),
               "start_to_healthy_s": fan["start_to_healthy_s"], "first_sync_s": fan["sync"]["sync_all_s"],
               "start_to_full_set_s": fan["start_to_healthy_s"] + fan["sync"]["sync_all_s"],
               "clients": fan["clients"], "mode": fan["mode"], "rss_synced_mb": fan["rss_synced_mb"],
               "edits": fan.get("edits", [])}
        for kind in ("policy", "model"):
            times = [e["all_s"] for e in fan.get("edits", []) if e["kind"] == kind]
            done = [t for t in times if t is not None]
            row[f"edit_{kind}_s_median"] = statistics.median(done) if done else None
            row[f"edit_{kind}_s_max"] = max(done) if done and len(done) == len(times) else None
        rows.append(row)
        print(f"  (iv) {models}x{regions}: validate {row['validate_s']:.2f} s, start -> full set "
              f"{row['start_to_full_set_s']:.2f} s, edit -> all ACKed (worst): one model "
              f"{_ms(row['edit_model_s_max'], '.0f')} ms, global policy {_ms(row['edit_policy_s_max'], '.0f')} ms",
              file=sys.stderr)
    return rows


