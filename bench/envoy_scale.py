"""A real Envoy on a large config: what the Envoy itself needs, beside the control plane's part.

bench/controlplane.py (iv) measures large configs with simulated Envoys, which ACK as soon as
a response is parsed. A real Envoy also builds every cluster it is sent. This starts the
product (`python -m control_plane serve`) with the synthetic config of part (iv), one real
Envoy of the first region (1 worker), and measures:

- start: from the Envoy process's start until it is ready (LIVE, listener bound: every cluster,
  endpoint, listener and route applied), its RSS and what its allocator holds (/memory);
- an edit of the global policy (every route and cluster changes), from the file write until
  the Envoy's own stats show the new clusters and routes applied (the CDS and RDS versions
  it reports equal the control plane's, no cluster warming).

Variants: `product` (as shipped, the Envoy on SotW xDS), `delta` (the same with the Envoy
bootstrapped with `--delta`), `tls` (the same with every region over TLS, as in production:
the synthetic config's regions are plain HTTP; nothing connects, so this is what the Envoy
needs to build TLS clusters), `tls-1ca` (the same with a CA file of one certificate),
`no-model-stats` (the product with Envoy's stats of the model clusters turned off in the
bootstrap, `stats_matcher`), `lean-stats` (only some of them off: connection, load-balancer
and circuit-breaker stats, per-code and in-flight request stats; what dashboards and alerts
use kept), measuring what per-cluster stats cost, `lazy-cluster-stats` (the Envoy bootstrapped
with `--lazy-cluster-stats`: traffic stats made when first used), `tls-tuned` (TLS with what
docs recommend for large configs: a one-certificate CA file, `--delta`, `--lazy-cluster-stats`),
and `no-lua` (the same config with the Lua rewrite left out of
every cluster's per-attempt filters, to tell the Envoy's memory apart; requests would not be
rewritten, so this is for measuring only).

    python -m bench.envoy_scale [--sizes 100x5,1000x5] [--variants product,no-lua,delta]
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    control_plane_healthy,
    machine,
    rss_bytes,
    stop_process,
    wait_until,
    write_json,
)
from bench.fanout import EDIT_POLICIES, fanout_config  # noqa: E402

# The control plane of the `no-lua` variant: the product with the Lua filter dropped from every
# cluster's per-attempt chain (run in its own process, as the product is).
_NO_LUA = """
import runpy, sys
from control_plane.resources import upstream
_all = upstream._upstream_filters
upstream._upstream_filters = lambda *a, **k: tuple(f for f in _all(*a, **k) if f.name != "envoy.filters.http.lua")
sys.argv = ["control_plane", *sys.argv[1:]]
runpy.run_module("control_plane", run_name="__main__")
"""
_TEXT_STAT = re.compile(r'^(\S+): "(.*)"$')


def _text_stats(envoy, prefix: str) -> dict[str, str]:
    """Envoy's text readouts (versions) under `prefix`."""
    out = {}
    for line in envoy.admin(f"stats?filter={prefix}").splitlines():
        found = _TEXT_STAT.match(line.strip())
        if found:
            out[found[1]] = found[2]
    return out


def _versions(envoy) -> tuple[str, str]:
    """(CDS version, RDS version) the Envoy reports having applied."""
    texts = _text_stats(envoy, "version_text")
    cds = texts.get("cluster_manager.cds.version_text", "")
    rds = next((v for k, v in texts.items() if k.endswith(".rds.vertex.version_text")), "")
    return cds, rds


def _sent_versions(admin_port: int, node_id: str) -> tuple[str, str]:
    """(CDS, RDS) versions the control plane last sent this node; raises if the node NACKed one
    (it would never apply the edit: better said at once than after the timeout)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/debug/clients", timeout=5) as resp:
        clients = json.load(resp)
    for stream in clients["clients"]:
        if stream["node_id"] == node_id:
            types = stream["types"]
            for name, state in types.items():
                if state["status"] == "NACKED":
                    raise RuntimeError(f"{node_id} NACKed {name}: {state['nack_error']}")
            return types.get("Cluster", {}).get("version_sent", ""), \
                types.get("RouteConfiguration", {}).get("version_sent", "")
    return "", ""


def run_one(models: int, regions: int, variant: str, workdir: Path) -> dict:
    from control_plane.lab.envoy_process import EnvoyProcess
    from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key
    from control_plane.lab.harness import LoopThread, free_port, write_config

    loop = LoopThread()
    tokens = FakeTokenServer(expires_in=3600)
    loop.call(tokens.start())
    key = write_service_account_key(workdir / "key.json", tokens.token_uri)
    config = fanout_config(models, regions, str(key))
    if variant in ("tls", "tls-1ca", "tls-tuned"):  # as in production: every region over TLS
        one_ca = workdir / "one-ca.pem"  # tls-1ca: a CA file of one certificate, not the system bundle
        bundle = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
        one_ca.write_text(bundle[:bundle.index("-----END CERTIFICATE-----") + 26])
        for spec in config["regions"].values():
            spec["tls"] = True
            if variant != "tls":
                spec["ca_file"] = str(one_ca)
    path = write_config(workdir / "regions.yaml", config)
    xds_port, admin_port = free_port(), free_port()
    command = ["-c", _NO_LUA] if variant == "no-lua" else ["-m", "control_plane"]
    with open(workdir / "cp.log", "wb") as log:  # (the process keeps its own copy of the descriptor)
        plane = subprocess.Popen([sys.executable, *command, "serve", "--config", str(path), "--xds-port",
                                  str(xds_port), "--admin-port", str(admin_port)], cwd=ROOT, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    envoy = None
    out: dict = {"models": models, "regions": regions, "variant": variant}
    try:
        wait_until(lambda: control_plane_healthy(admin_port), 120, "the control plane", interval=0.02)
        region = next(iter(config["regions"]))
        envoy = EnvoyProcess(region, f"127.0.0.1:{xds_port}", f"127.0.0.1:{free_port()}", workdir=workdir,
                             log_level="error", delta=variant in ("delta", "tls-tuned"),
                             lazy_cluster_stats=variant in ("lazy-cluster-stats", "tls-tuned"))
        if variant in ("no-model-stats", "lean-stats"):  # what the model clusters' stats cost
            boot = yaml.safe_load(envoy.bootstrap_path.read_text())
            if variant == "lean-stats":
                boot["stats_config"]["stats_matcher"] = {"exclusion_list": {"patterns": [{"safe_regex": {"regex": (
                    r"^cluster\.model/[^.]+\.(?:upstream_cx_(?:total|http[123]_total|idle_timeout|max_duration_reached"
                    r"|connect_attempts_exceeded|overflow|length_ms|close_notify|[rt]x_bytes_[a-z_]+|pool_overflow"
                    r"|protocol_error|max_requests|none_healthy|destroy[a-z_]*|active|connect_with_0_rtt)"
                    r"|lb_[a-z_]+|bind_errors|assignment_[a-z_]+|update_[a-z_]+|upstream_flow_control_[a-z_]+"
                    r"|circuit_breakers\..*|max_host_weight|version|init_fetch_timeout|retry_or_shadow_abandoned"
                    r"|original_dst_host_invalid|upstream_internal_redirect_[a-z_]+|upstream_http3_broken"
                    r"|warming_state|upstream_rq_(?:[0-9]{3}|completed|active|pending_[a-z_]+|per_try_[a-z_]+"
                    r"|rx_reset|tx_reset|cancelled|maintenance_mode|max_duration_reached|timeout)"
                    r"|upstream_(?:cx|rq)_[a-z_]+_(?:total|active)|membership_[a-z_]+|default\..*)$")}}]}}
            else:
                boot["stats_config"]["stats_matcher"] = {"exclusion_list": {"patterns": [{"prefix": "cluster.model/"}]}}
            envoy.bootstrap_path.write_text(yaml.safe_dump(boot))
        t0 = time.monotonic()
        envoy.start().wait_ready(600)
        out["start_to_ready_s"] = time.monotonic() - t0
        time.sleep(1.0)  # the last ACKs and the allocator settle
        memory = json.loads(envoy.admin("memory"))
        out.update({"envoy_rss_mb": rss_bytes(envoy.proc.pid) / 2**20,
                    "envoy_allocated_mb": int(memory["allocated"]) / 2**20,
                    "envoy_heap_mb": int(memory["heap_size"]) / 2**20,
                    "clusters": envoy.stats("cluster_manager.active_clusters").get(
                        "cluster_manager.active_clusters")})
        before = _versions(envoy)
        edited = copy.deepcopy(config)
        edited["policy"] = EDIT_POLICIES[0]
        t1 = time.monotonic()
        write_config(path, edited)

        def applied() -> bool:
            sent = _sent_versions(admin_port, envoy.node_id)  # (raises on a NACK)
            try:  # the Envoy's admin may be slow to answer while it builds thousands of clusters
                now = _versions(envoy)
                warming = envoy.stats("cluster_manager.warming_clusters").get("cluster_manager.warming_clusters")
            except OSError:
                return False
            return now[0] != before[0] and now[1] != before[1] and now == sent and warming == 0

        deadline = time.monotonic() + 600
        while not applied():
            if time.monotonic() > deadline:
                raise TimeoutError("the Envoy did not apply the edit in 600 s")
            time.sleep(0.02)
        out["edit_to_applied_s"] = time.monotonic() - t1
        out["envoy_rss_after_edit_mb"] = rss_bytes(envoy.proc.pid) / 2**20
    finally:
        if envoy is not None:
            envoy.stop()
        stop_process(plane, 15)
        loop.call(tokens.stop())
        loop.close()
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| models x regions | variant | clusters | start -> ready | Envoy RSS | allocator: allocated / heap "
             "| global edit (file written) -> applied | RSS after the edit |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['models']:,} x {r['regions']} | {r['variant']} | {r['clusters']:,} | "
                     f"{r['start_to_ready_s']:.1f} s | {r['envoy_rss_mb']:,.0f} MB | "
                     f"{r['envoy_allocated_mb']:,.0f} / {r['envoy_heap_mb']:,.0f} MB | "
                     f"{r['edit_to_applied_s']:.1f} s | {r['envoy_rss_after_edit_mb']:,.0f} MB |")
    by = {(r["models"], r["regions"], r["variant"]): r for r in rows}
    for (m, n, v), r in by.items():
        bare = by.get((m, n, "no-lua"))
        if v == "product" and bare and r["clusters"]:
            per = (r["envoy_rss_mb"] - bare["envoy_rss_mb"]) * 1024 / r["clusters"]
            lines.append(f"\n{m:,} x {n}: the Lua rewrite costs the Envoy {r['envoy_rss_mb'] - bare['envoy_rss_mb']:,.0f} MB "
                         f"of RSS, {per:,.0f} KB per cluster of the config (Envoy keeps a Lua state per thread for "
                         "each cluster whose filters hold the Lua rewrite: the aggregates and spreads).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100x5,1000x5", help="MODELSxREGIONS,...")
    parser.add_argument("--variants", default="product,no-lua", help="product, no-lua, delta, tls, tls-1ca, no-model-stats, lean-stats, lazy-cluster-stats, tls-tuned")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc)
    rows = []
    for size in args.sizes.split(","):
        models, regions = (int(x) for x in size.split("x"))
        for variant in args.variants.split(","):
            row = run_one(models, regions, variant, Path(tempfile.mkdtemp(prefix="bench-envoy-scale-")))
            print(f"  {models}x{regions} {variant}: ready {row['start_to_ready_s']:.1f} s, RSS "
                  f"{row['envoy_rss_mb']:.0f} MB, edit -> applied {row['edit_to_applied_s']:.1f} s", file=sys.stderr)
            rows.append(row)
    text = markdown(rows)
    print(text)
    path = write_json(args.out, "envoy-scale", started, {
        "benchmark": "envoy_scale", "machine": machine(), "command": " ".join(sys.argv), "rows": rows,
        "markdown": text})
    print(f"results written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
