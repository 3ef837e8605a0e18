"""Load reports and fleet-wide avoidance: what they cost the control plane, how fast they act.

  (i)  CPU per 1,000 load reports: a control plane process (`python -m control_plane serve`)
       and, in this process, N simulated Envoys on grpc.aio, each an LRS stream that sends a
       report every `--every` seconds holding every cluster of a config of M models x R regions
       (per-region clusters with locality stats, as Envoy sends them). The control plane's CPU
       (utime + stime from /proc) over the run, per 1,000 reports it counted
       (vertex_gateway_load_reports_total).
  (ii) time to fleet-wide avoidance, with real Envoys: two Envoys in us-central1 (A, B);
       us-central1's emulator starts answering 503; A's clients keep sending (failover answers
       them); the clock runs from A's first failing request until B's aggregate cluster lists
       us-east4 first (B's own config_dump), i.e. B would no longer send us-central1 a first
       attempt. Repeated; at the default report interval (1 s) and at 0.2 s.

    python -m bench.fleet [--parts i,ii] [--envoys 10,100] [--reports 3000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    control_plane_healthy,
    cpu_seconds,
    machine,
    stop_process,
    wait_until,
    write_json,
)


def synthetic_config(models: int, regions: int, key: str) -> dict:
    names = [f"region-{i}" for i in range(regions)]
    return {
        "project": "bench", "auth": {"credentials": f"service_account:{key}"},
        "regions": {r: {"address": f"10.0.{i}.1", "failover": [x for x in names if x != r][:2]}
                    for i, r in enumerate(names)},
        "models": {f"m{j}": {"default": j == 0, "endpoints": {r: str(1000 * j + i + 1) for i, r in enumerate(names)}}
                   for j in range(models)},
        "observability": {"load_reports": {"interval": "1s", "window": "10s"}},
    }


def report_of(config: dict, region: str, tick: int):
    from envoy.config.core.v3 import base_pb2
    from envoy.config.endpoint.v3 import load_report_pb2
    from envoy.service.load_stats.v3 import lrs_pb2

    stats = []
    for model in config["models"]:
        stats.append(load_report_pb2.ClusterStats(cluster_name=f"model/{model}"))
        for r in config["regions"]:
            stats.append(load_report_pb2.ClusterStats(cluster_name=f"model/{model}@{r}", upstream_locality_stats=[
                load_report_pb2.UpstreamLocalityStats(
                    locality=base_pb2.Locality(region=r), total_successful_requests=20 + tick % 7,
                    total_error_requests=tick % 3, total_issued_requests=21)]))
    return lrs_pb2.LoadStatsRequest(cluster_stats=stats)


async def _envoys(address: str, config: dict, n: int, reports: int, every: float) -> int:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.load_stats.v3 import lrs_pb2, lrs_pb2_grpc
    from google.protobuf import struct_pb2

    regions = list(config["regions"])
    per_envoy = max(1, reports // n)
    prebuilt = {r: [report_of(config, r, t) for t in range(21)] for r in regions}

    async def one(i: int) -> int:
        region = regions[i % len(regions)]
        metadata = struct_pb2.Struct()
        metadata.update({"region": region})
        queue: asyncio.Queue = asyncio.Queue()
        await queue.put(lrs_pb2.LoadStatsRequest(node=base_pb2.Node(id=f"sim-{i}", metadata=metadata)))

        async def requests():
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item

        async with grpc.aio.insecure_channel(address) as channel:
            call = lrs_pb2_grpc.LoadReportingServiceStub(channel).StreamLoadStats(requests())
            await call.read()  # the control plane's settings
            await asyncio.sleep(every * i / n)  # spread the streams over the interval
            for t in range(per_envoy):
                await queue.put(prebuilt[region][t % 21])
                await asyncio.sleep(every)
            await queue.put(None)  # half-close; the control plane then ends the call
            while await call.read() != grpc.aio.EOF:
                pass
        return per_envoy

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


def _metric(admin: str, name: str) -> float:
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def part_cpu(args, n: int, workdir: Path) -> dict:
    from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key
    from control_plane.lab.harness import LoopThread, free_port, write_config

    loop = LoopThread()
    tokens = FakeTokenServer(expires_in=3600)
    loop.call(tokens.start())
    key = write_service_account_key(workdir / f"key-{n}.json", tokens.token_uri)
    config = synthetic_config(args.models, args.regions, str(key))
    path = write_config(workdir / f"regions-{n}.yaml", config)
    xds, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    log = open(workdir / f"cp-{n}.log", "ab")
    plane = subprocess.Popen([sys.executable, "-m", "control_plane", "serve", "--config", str(path),
                              "--xds-port", str(xds), "--admin-port", str(admin_port)],
                             cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_until(lambda: control_plane_healthy(admin_port), 60, "the control plane")
        time.sleep(0.5)
        cpu0, t0 = sum(cpu_seconds([plane.pid])), time.monotonic()
        sent = asyncio.run(_envoys(f"127.0.0.1:{xds}", config, n, args.reports, args.every))
        wait_until(lambda: _metric(admin, "vertex_gateway_load_reports_total") >= sent, 30, "every report counted")
        cpu = sum(cpu_seconds([plane.pid])) - cpu0
        wall = time.monotonic() - t0
        counted = _metric(admin, "vertex_gateway_load_reports_total")
        clusters = args.models * (args.regions + 1)
        return {"envoys": n, "reports": counted, "clusters_per_report": clusters, "wall_s": round(wall, 2),
                "reports_per_s": round(counted / wall, 1), "cp_cpu_s": round(cpu, 3),
                "cp_cpu_ms_per_1000_reports": round(1000 * 1000 * cpu / counted, 1),
                "cp_cores": round(cpu / wall, 3)}
    finally:
        stop_process(plane)
        loop.call(tokens.stop())
        loop.close()


def part_avoidance(args, interval: str) -> dict:
    import requests

    from control_plane.lab.envoy_process import EnvoyProcess
    from control_plane.lab.harness import free_port
    from control_plane.lab.stack import Stack

    times = []
    for _ in range(args.repeats):
        stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra={
            "observability": {"load_reports": {"interval": interval, "hold": "300s"}}})
        b = None
        try:
            b = EnvoyProcess("us-central1", stack.plane.xds_address, f"127.0.0.1:{free_port()}",
                             node_id="envoy-b", workdir=stack.dir).start().wait_ready()
            url = stack.url("/v1/models/housing:predict")

            def a_reported() -> bool:
                requests.post(url, json={"instances": [1]}, timeout=10)
                regions = requests.get(stack.plane.admin_url + "/debug/regions", timeout=5).json()
                return "envoy-us-central1" in regions["load"]["regions"]["us-central1"]["envoys_sending"]

            wait_until(a_reported, 30, "A's load reports")
            stack.emulators["us-central1"].fail("503")
            started = time.monotonic()
            while b.first_region() != "us-east4":
                if time.monotonic() - started > 30:
                    raise TimeoutError("no avoidance in 30 s")
                requests.post(url, json={"instances": [1]}, timeout=10)  # A's traffic keeps failing over
            times.append(time.monotonic() - started)
        finally:
            if b is not None:
                b.stop()
            stack.close()
    return {"interval": interval, "runs": len(times), "median_s": round(statistics.median(times), 3),
            "min_s": round(min(times), 3), "max_s": round(max(times), 3), "all_s": [round(t, 3) for t in times]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="i,ii")
    parser.add_argument("--envoys", default="10,100", help="simulated Envoys for part i")
    parser.add_argument("--reports", type=int, default=3000, help="load reports per cell of part i")
    parser.add_argument("--every", type=float, default=0.05, help="seconds between one Envoy's reports (part i)")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="runs per interval of part ii")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",")}
    started = dt.datetime.now(dt.timezone.utc)
    doc: dict = {"benchmark": "fleet", "started": started.isoformat(timespec="seconds"), "machine": machine(),
                 "command": "python -m bench.fleet " + " ".join(argv if argv is not None else sys.argv[1:])}
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    if "i" in parts:
        doc["cpu"] = []
        for n in [int(x) for x in args.envoys.split(",")]:
            cell = part_cpu(args, n, workdir)
            doc["cpu"].append(cell)
            print(f"  {n:4d} Envoys: {cell['reports']:.0f} reports of {cell['clusters_per_report']} clusters, "
                  f"{cell['reports_per_s']:.0f}/s: control plane {cell['cp_cpu_ms_per_1000_reports']:.0f} ms CPU "
                  f"per 1,000 reports ({cell['cp_cores']:.2f} cores)", file=sys.stderr)
    if "ii" in parts:
        doc["avoidance"] = []
        for interval in ("1s", "0.2s"):
            cell = part_avoidance(args, interval)
            doc["avoidance"].append(cell)
            print(f"  report interval {interval}: first failure -> B's new order median {cell['median_s']:.2f} s "
                  f"(min {cell['min_s']:.2f}, max {cell['max_s']:.2f}, {cell['runs']} runs)", file=sys.stderr)
    path = write_json(args.out, "fleet", started, doc)
    print(f"results written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
