"""The estimate of what upstream TLS trust stores cost each Envoy (control_plane/trust_stores.py):
TLS contexts counted per CA file as the clusters name them, the memory estimate, the warning in
`validate` and at /debug/regions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trustme
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from control_plane import trust_stores
from control_plane.cache import SnapshotCache
from control_plane.resources.names import DEFAULT_CA_FILE
from control_plane.wire import as_message

from .config_problems import load, write
from .configs import CONFIG, base

REPO = Path(__file__).resolve().parents[1]


def ca_file(path: Path, certificates: int) -> Path:
    """A PEM file of `certificates` CA certificates (one test CA, repeated: Envoy parses each)."""
    path.write_bytes(trustme.CA().cert_pem.bytes() * certificates)
    return path


def decoded_contexts(clusters) -> dict[str, int]:
    """The oracle: TLS contexts per CA file, from the clusters decoded as Envoy would read them."""
    out: dict[str, int] = {}
    for resource in clusters:
        cluster = as_message(resource.built)
        sockets = [cluster.transport_socket] if cluster.HasField("transport_socket") else []
        sockets += [match.transport_socket for match in cluster.transport_socket_matches]
        for socket in sockets:
            tls = tls_pb2.UpstreamTlsContext()
            socket.typed_config.Unpack(tls)
            path = tls.common_tls_context.validation_context.trusted_ca.filename
            out[path] = out.get(path, 0) + 1
    return out


def test_contexts_are_counted_per_ca_file_as_the_clusters_name_them(tmp_path):
    # CONFIG: us-central1 and us-east4 over TLS, europe-west4 plain; a least-request model
    # (gemini) whose spread cluster has one TLS context per TLS region.
    own = ca_file(tmp_path / "east.pem", 3)
    config = load(tmp_path, CONFIG.replace("    host: vertex.east.internal\n",
                                           f"    host: vertex.east.internal\n    ca_file: {own}\n"))
    by_region = SnapshotCache(config).region_clusters()
    assert set(by_region) == set(config.vertex_regions)
    for region, clusters in by_region.items():
        counted = trust_stores.contexts_per_ca_file(config, clusters)
        assert counted == decoded_contexts(clusters), region
        assert set(counted) == {DEFAULT_CA_FILE, str(own)}


def test_the_estimate_is_contexts_times_certificates(tmp_path):
    bundle = ca_file(tmp_path / "bundle.pem", 40)
    data = base()
    for spec in data["regions"].values():
        spec["ca_file"] = str(bundle)
    config = load(tmp_path, data)
    figures = trust_stores.estimate(config, SnapshotCache(config).region_clusters())
    for region, clusters in SnapshotCache(config).region_clusters().items():
        contexts = decoded_contexts(clusters)[str(bundle)]
        assert figures[region]["ca_files"] == {str(bundle): {"tls_contexts": contexts, "certificates": 40}}
        assert figures[region]["estimated_mb"] == round(contexts * 40 * trust_stores.KB_PER_CERTIFICATE / 1024)
    assert trust_stores.warning(figures) is None
    warning = trust_stores.warning(figures, threshold_mb=0)
    assert f"{bundle}, 40 certificates, x" in warning and "`ca_file`" in warning


def test_no_tls_no_contexts(tmp_path):
    data = base()
    for spec in data["regions"].values():
        spec["tls"] = False
    config = load(tmp_path, data)
    figures = trust_stores.estimate(config, SnapshotCache(config).region_clusters())
    assert all(f == {"ca_files": {}, "estimated_mb": 0} for f in figures.values())


@pytest.mark.parametrize("certificates, warned", [(1, False), (4000, True)])
def test_validate_warns_on_stderr_past_the_threshold(tmp_path, certificates, warned):
    # 20 models x 2 TLS regions: 40+ TLS contexts per Envoy; 4,000 certificates each is ~280 MB.
    bundle = ca_file(tmp_path / "bundle.pem", certificates)
    data = base()
    for spec in data["regions"].values():
        spec["ca_file"] = str(bundle)
    for i in range(20):
        data["models"][f"m{i}"] = {"endpoints": {"us-central1": str(100 + i), "us-east4": str(200 + i)}}
    path = write(tmp_path, data)
    result = subprocess.run([sys.executable, "-m", "control_plane", "validate", str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 and "OK" in result.stdout
    assert (f"{path}: warning: the upstream TLS trust stores will take about" in result.stderr) is warned, \
        result.stderr
    if warned:
        assert f"{bundle}, 4000 certificates" in result.stderr


async def test_debug_regions_shows_the_estimate_of_the_config_in_force(tmp_path, plane, plane_config, caplog):
    import aiohttp

    from control_plane.lab.harness import until, write_config

    async def shown() -> dict | None:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{plane.admin_port}/debug/regions") as response:
                return (await response.json())["trust_stores"]

    first = await until(lambda: plane.trust_stores, what="the estimate after start")
    assert first["version"] == plane.cache.config.version and first["warning"] is None
    assert all(r == {"ca_files": {}, "estimated_mb": 0} for r in first["regions"].values())  # tls: false
    # An edit: both regions over TLS with a CA file of 4,000 certificates, 20 models more.
    bundle = ca_file(tmp_path / "bundle.pem", 4000)
    for spec in plane_config["regions"].values():
        spec.update(tls=True, ca_file=str(bundle))
    for i in range(20):
        plane_config["models"][f"m{i}"] = {"endpoints": {"us-central1": str(1000 + i), "us-east4": str(2000 + i)}}
    write_config(plane.config_path, plane_config)
    assert await plane.reload()
    edited = await until(lambda: (plane.trust_stores or {}).get("version") == plane.cache.config.version
                         and plane.trust_stores, what="the estimate of the edited config")
    assert edited["warning"] and f"{bundle}, 4000 certificates" in edited["warning"]
    assert edited["regions"]["us-central1"]["estimated_mb"] >= trust_stores.WARN_MB
    assert (await shown()) == edited
    assert any("trust stores will take about" in r.getMessage() for r in caplog.records)  # logged once
