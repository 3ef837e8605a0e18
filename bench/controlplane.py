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
import copy
import datetime as dt
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine, write_json  # noqa: E402
from bench.controlplane_report import markdown, plot, verdicts  # noqa: E402
from bench.fanout import BIG_SIZES, EDIT_POLICIES, _ms, median_run, part_big, part_fanout  # noqa: E402
from control_plane.lab.loadgen import percentile  # noqa: E402
from control_plane.xds_types import CLUSTER_TYPE, ROUTE_TYPE  # noqa: E402
from control_plane.xds_types import short as _short  # noqa: E402

SIZES = ((10, 5), (10, 20), (10, 40), (100, 5), (100, 20), (100, 40), (1000, 5), (1000, 20), (1000, 40))
CLIENTS = (10, 100, 1000)


# =========================================================================== (i) real Envoys


def part_edit_to_ack(args: argparse.Namespace, delta: bool) -> dict:
    from control_plane.lab.harness import write_config
    from control_plane.lab.stack import Stack

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
    from control_plane.resources import Build, NodeGroup, build_serialized
    from control_plane.snapshot import Interner, Snapshot

    rows = []
    for models, regions in args.sizes:
        data = synthetic_config(models, regions, args.failover)
        config = RegionConfig.model_validate(data)
        group = NodeGroup("region-00", config.listener.address, config.listener.port)
        build = Build(config)
        build_serialized(build, group)  # warm imports and caches
        build_t, snap_t, sizes = [], [], {}
        budget = time.monotonic() + args.build_budget
        for run in range(args.runs):
            gc.collect()
            t = time.perf_counter()
            built = build_serialized(build, group)  # what the product serves (pre-serialized parts)
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
    parser.add_argument("--fanout-repeats", type=int, default=1,
                        help="(ii) runs of each product/floor pair, in turn; figures are medians over them")
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
    parser.add_argument("--big-edits", type=int, default=3, help="(iv) edits per size and kind")
    parser.add_argument("--big-mode", choices=("sotw", "delta"), default="sotw",
                        help="(iv) the simulated Envoys' xDS variant")
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
        servers = ("product", "floor") if not args.no_floor else ("product",)
        for mode, n in [(m, n) for m in modes for n in clients]:
            runs: dict[str, list[dict]] = {server: [] for server in servers}
            for _ in range(args.fanout_repeats):  # product and floor in turn, so both meet the same load
                for server in servers:
                    f = part_fanout(args, n, workdir, server, mode)
                    runs[server].append(f)
                    print(f"  (ii) {server:7s} {mode:5s} {n:5d} clients: sync {f['sync']['sync_all_s']:.2f} s, "
                          f"edit -> all ACKed {_ms(f['edit_all_s_median'], '.0f')} / "
                          f"{_ms(f['edit_all_s_max'], '.0f')} ms (median/worst), RSS/client "
                          f"{f['rss_per_client_kb']:.1f} KB, CPU/edit {_ms(f['cp_cpu_s_median'], '.0f')} ms "
                          f"(load {f['loadavg_start'][0]:.1f})", file=sys.stderr)
            for server in servers:
                doc["fanout" if server == "product" else "floor"].append(median_run(runs[server]))
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
