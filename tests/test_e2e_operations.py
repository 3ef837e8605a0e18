"""Operating the control plane with real Envoys: NACK safety, restarts, replicas, admin auth."""

from __future__ import annotations

import pytest
import requests
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2

from control_plane.app import ControlPlane, PlaintextRefused
from control_plane.lab.harness import ControlPlaneThread, wait_for
from control_plane.lab.stack import Stack
from control_plane.resources import CLUSTER_TYPE, build_resources

pytestmark = pytest.mark.e2e


class PoisonSwitch:
    """Test-only builder hook: when on, add a cluster Envoy must reject."""

    def __init__(self):
        self.on = False

    def __call__(self, build, group):
        built = build_resources(build, group)
        if self.on:
            poison = cluster_pb2.Cluster(name="poison", connect_timeout=duration_pb2.Duration(seconds=-1))
            built = {**built, CLUSTER_TYPE: [*built[CLUSTER_TYPE], poison]}
        return built


def client_types(stack, node="envoy-us-central1"):
    clients = requests.get(stack.plane.admin_url + "/debug/clients", timeout=5).json()["clients"]
    return next(c for c in clients if c["node_id"] == node)["types"]


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_nack_is_shown_counted_not_looped_and_cleared_by_the_next_good_version(mode):
    poison = PoisonSwitch()
    stack = Stack(regions=("us-central1", "us-east4"), delta=mode == "delta", plane_options={"builder": poison})
    try:
        stack.wait_synced()
        envoy = stack.envoys["us-central1"]
        poison.on = True
        stack.update_config({"policy": {"outlier_detection": {"consecutive_5xx": 4}}})
        state = wait_for(lambda: (lambda t: t if t["status"] == "NACKED" else None)(client_types(stack)["Cluster"]),
                         what="the NACK at /debug/clients")
        assert "Invalid duration" in state["nack_error"]  # Envoy's own words
        metrics = requests.get(stack.plane.admin_url + "/metrics", timeout=5).text
        assert 'vertex_gateway_xds_nacks_total{type="Cluster"} 1.0' in metrics
        pushes = stack.plane.plane.metrics.pushes.labels("Cluster", mode)._value.get()
        # Envoy keeps serving its last good config; 100 requests later nothing was re-sent
        for _ in range(100):
            assert stack.post("/predict", json={"instances": [1]}).status_code == 200
        assert stack.plane.plane.metrics.pushes.labels("Cluster", mode)._value.get() == pushes
        assert envoy.stats("cluster_manager.cds.update_rejected")["cluster_manager.cds.update_rejected"] == 1
        poison.on = False
        stack.update_config({"policy": {"outlier_detection": {"consecutive_5xx": 5}}})
        stack.wait_synced()
        assert client_types(stack)["Cluster"]["status"] == "SYNCED"
    finally:
        stack.close()


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_envoy_keeps_serving_while_the_control_plane_is_down_and_resyncs(mode):
    stack = Stack(regions=("us-central1", "us-east4"), delta=mode == "delta")
    try:
        stack.wait_synced()

        def while_down():
            for _ in range(20):
                assert stack.post("/predict", json={"instances": [1]}).status_code == 200

        stack.restart_control_plane(while_down)
        stack.wait_synced(timeout=40)  # Envoy's reconnect backoff decides how soon
        assert stack.post("/predict", json={"instances": [1]}).status_code == 200
        if mode == "delta":
            # content-hash versions: the new replica sends nothing the Envoy already holds
            # (only the access token differs: each replica mints its own)
            pushes = stack.plane.plane.metrics.pushes
            for kind in ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"):
                assert pushes.labels(kind, "delta")._value.get() == 0, kind
    finally:
        stack.close()


def test_two_replicas_produce_identical_versions():
    stack = Stack(regions=("us-central1", "us-east4"))
    other = ControlPlaneThread(stack.config_path)
    try:
        stack.wait_synced()
        node = {"node": "envoy-us-central1"}
        mine = requests.get(stack.plane.admin_url + "/debug/config", params=node, timeout=5).json()
        # the other replica has no client: compare what it would serve this node's group
        group = next(iter(stack.plane.plane.clients.streams())).node
        from control_plane.cache import node_group

        theirs = other.loop.run(lambda: {
            t: {r.name: r.version for r in other.plane.cache.select(node_group(group, other.plane.cache.config), t)}
            for t in ("type.googleapis.com/envoy.config.cluster.v3.Cluster",
                      "type.googleapis.com/envoy.config.route.v3.RouteConfiguration")})
        assert {r["name"]: r["version"] for r in mine["resources"]["Cluster"]} == theirs[
            "type.googleapis.com/envoy.config.cluster.v3.Cluster"]
        assert {r["name"]: r["version"] for r in mine["resources"]["RouteConfiguration"]} == theirs[
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"]
    finally:
        other.close()
        stack.close()


def test_admin_off_loopback_requires_a_bearer_token(tmp_path):
    config = tmp_path / "regions.yaml"
    config.write_text("project: p\nregions: {us-central1: {address: 10.0.0.1}}\n"
                      "models: {m: {default: true, endpoints: {us-central1: '1'}}}\n")
    with pytest.raises(PlaintextRefused, match="bearer token"):
        ControlPlane(config, admin_address="0.0.0.0:0")
    plane = ControlPlaneThread(config, admin_token="s3cret", watch=False)
    try:
        url = plane.admin_url
        assert requests.get(url + "/debug/clients", timeout=5).status_code == 401
        assert requests.get(url + "/debug/clients", headers={"authorization": "Bearer nope"}, timeout=5).status_code == 401
        assert requests.get(url + "/debug/clients", headers={"authorization": "Bearer s3cret"},
                            timeout=5).status_code == 200
        assert requests.get(url + "/healthz", timeout=5).status_code in (200, 503)  # open for probes
        auth = {"authorization": "Bearer s3cret"}
        missing = requests.get(url + "/debug/nothing", headers=auth, timeout=5)
        assert missing.status_code == 404 and missing.json() == {"error": "Not Found", "path": "/debug/nothing"}
        wrong = requests.get(url + "/debug/regions/us-central1/restore", headers=auth, timeout=5)
        assert wrong.status_code == 405 and wrong.json()["error"] == "Method Not Allowed"
        assert wrong.headers["allow"] == "POST"
        assert requests.get(url + "/debug/nothing", timeout=5).status_code == 401  # the token first
    finally:
        plane.close()
