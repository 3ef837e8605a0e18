"""Turn built xDS resources into one static Envoy config, for `envoy --mode validate`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from google.protobuf import json_format

from control_plane.bootstrap import RE2_MAX_PROGRAM_SIZE
from control_plane.lab.envoy_process import envoy_binary
from control_plane.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE


def static_config(resources: dict) -> dict:
    assignments = {la.cluster_name: la for la in resources[ENDPOINT_TYPE]}
    routes = {rc.name: rc for rc in resources[ROUTE_TYPE]}
    clusters = []
    for cluster in resources[CLUSTER_TYPE]:
        data = json_format.MessageToDict(cluster)
        if data.get("type") == "EDS":  # inline what EDS would deliver
            data.pop("edsClusterConfig")
            data["type"] = "STATIC"
            data["loadAssignment"] = json_format.MessageToDict(assignments[cluster.name])
        clusters.append(data)
    listeners = []
    for listener in resources[LISTENER_TYPE]:
        data = json_format.MessageToDict(listener)
        for chain in data["filterChains"]:
            for flt in chain["filters"]:
                hcm = flt["typedConfig"]
                if "rds" in hcm:
                    hcm["routeConfig"] = json_format.MessageToDict(routes[hcm.pop("rds")["routeConfigName"]])
        listeners.append(data)
    secrets = sorted(set(_sds_names(clusters)))
    return {
        "node": {"id": "validate", "cluster": "vertex-gateway"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "staticResources": {"listeners": listeners, "clusters": clusters, "secrets": [
            {"name": name, "genericSecret": {"secret": {"inlineString": "Bearer validate"}}} for name in secrets]},
    }


def _sds_names(node):
    """Turn SDS references into static-secret references (by name), yielding the names."""
    if isinstance(node, dict):
        if "sdsConfig" in node and "name" in node:
            node.pop("sdsConfig")
            yield node["name"]
        for value in node.values():
            yield from _sds_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _sds_names(value)


def envoy_refusal(resources: dict, workdir: Path) -> str | None:
    """What `envoy --mode validate` says against these built resources (as one static config),
    or None when it accepts them."""
    static = static_config(resources)
    static["layeredRuntime"] = {"layers": [{"name": "static", "staticLayer": {
        "re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE}}]}
    path = workdir / "static.json"
    path.write_text(json.dumps(static))
    result = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
                            capture_output=True, text=True, timeout=60)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


def assert_envoy_accepts(resources: dict, tmp_path: Path) -> None:
    refusal = envoy_refusal(resources, tmp_path)
    assert refusal is None, refusal
