"""What the upstream TLS trust stores cost each Envoy.

Envoy 1.40.0 parses a TLS cluster's CA file into a trust store of that cluster's own, for
every cluster (envoyproxy/envoy#46114; measured here; a change merged upstream,
envoyproxy/envoy#47268, shares the CA certificates in later Envoys). This gateway has a TLS
cluster per model and region an Envoy can reach, so with the system bundle (about 140
certificates, ~250 KB parsed) 1,000 models x 5 regions is 3,000 copies: ~740 MB per Envoy,
more than the model clusters themselves. `serve` logs a warning past WARN_MB, /debug/regions
shows the estimate per region, `validate` prints it. A `ca_file` holding only the roots
Vertex's certificates chain to cuts it to a few KB per cluster (docs/CONFIG.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .config import RegionConfig
from .resources.names import DEFAULT_CA_FILE
from .snapshot import Resource
from .wire import entry

# Envoy 1.40's memory per certificate of a CA file, per TLS cluster: bench/envoy_scale.py, the
# variants `tls` (the system bundle) and `tls-1ca` (one certificate), 300 x 5 and 1,000 x 5.
KB_PER_CERTIFICATE = 1.75
WARN_MB = 256
_FILENAME = 1  # DataSource.filename: the CA file a TLS context names


def ca_files(config: RegionConfig) -> set[str]:
    """Every CA file an upstream TLS context of this config names."""
    return {spec.ca_file or DEFAULT_CA_FILE for spec in config.regions.values() if spec.tls}


def contexts_per_ca_file(config: RegionConfig, clusters: Iterable[Resource],
                         seen: dict[int, tuple[tuple[str, int], ...]] | None = None) -> dict[str, int]:
    """How many TLS contexts (each its own trust store) these clusters make an Envoy load, per
    CA file: a region's cluster has one, a least-request spread one per TLS region. `seen`:
    (CA file, count) pairs by resource, for clusters that several regions' Envoys share."""
    paths = sorted(ca_files(config))
    if not paths:  # no region over TLS
        return {}
    # The filename field with its tag and length: a path that begins another cannot match it.
    needles = [entry(_FILENAME, path.encode()) for path in paths]
    seen = {} if seen is None else seen
    totals = dict.fromkeys(paths, 0)
    for cluster in clusters:
        counts = seen.get(id(cluster))
        if counts is None:
            data = cluster.response_entry  # the cluster as sent (within its Any), already bytes
            counts = seen[id(cluster)] = tuple((p, n) for p, needle in zip(paths, needles)
                                               if (n := data.count(needle)))
        for path, n in counts:
            totals[path] += n
    return {path: n for path, n in totals.items() if n}


def certificates_in(path: str) -> int | None:
    """Certificates in a PEM file as this process sees it (the Envoy's copy should be the same);
    None when it cannot be read."""
    try:
        return Path(path).read_bytes().count(b"-----BEGIN CERTIFICATE-----")
    except OSError:
        return None


def estimate(config: RegionConfig, clusters_by_region: Mapping[str, Iterable[Resource]]) -> dict[str, dict]:
    """Per Vertex region: each CA file's TLS contexts and certificates, and the estimated memory
    of their trust stores in each of the region's Envoys."""
    certificates = {path: certificates_in(path) for path in ca_files(config)}
    out, seen = {}, {}
    for region, clusters in clusters_by_region.items():
        contexts = contexts_per_ca_file(config, clusters, seen)
        out[region] = {
            "ca_files": {path: {"tls_contexts": n, "certificates": certificates[path]}
                         for path, n in sorted(contexts.items())},
            "estimated_mb": round(sum(n * (certificates[p] or 0) for p, n in contexts.items())
                                  * KB_PER_CERTIFICATE / 1024),
        }
    return out


def warning(estimates: Mapping[str, dict], threshold_mb: int = WARN_MB) -> str | None:
    """None below the threshold in every region's Envoys; else what to do about it."""
    worst = max(estimates.items(), key=lambda item: item[1]["estimated_mb"], default=None)
    if worst is None or worst[1]["estimated_mb"] < threshold_mb:
        return None
    region, figures = worst
    files = "; ".join(f"{path}, {f['certificates'] if f['certificates'] is not None else 'unreadable here: ?'} "
                      f"certificates, x {f['tls_contexts']:,} TLS contexts" for path, f in figures["ca_files"].items())
    return (f"the upstream TLS trust stores will take about {figures['estimated_mb']:,} MB of each {region} "
            f"Envoy's memory: Envoy parses the CA file once per TLS cluster ({files}). Set the regions' `ca_file` "
            "to a file of only the roots Vertex's certificates chain to (docs/CONFIG.md, \"Envoy memory and "
            "ca_file\"), or size the Envoys' memory limit for it")
