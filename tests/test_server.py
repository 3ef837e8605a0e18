"""The ADS server over real gRPC, with a scripted client speaking the xDS protocol."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.app import ControlPlane
from control_plane.lab.ads_client import AdsClient
from control_plane.lab.fake_oauth import write_service_account_key
from control_plane.lab.harness import until, write_config
from control_plane.resources import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE

from .ads_steps import sync
from .configs import TWO_REGIONS
from .xds_fakes import cluster_names


@pytest.fixture
async def client(plane):
    client = AdsClient(f"127.0.0.1:{plane.xds_port}")
    yield client
    await client.close()


def types(plane, node_id="envoy-test"):
    return plane.clients.by_node(node_id)[0].to_dict()["types"]


async def test_initial_request_ack_and_status(plane, client):
    client.send(CLUSTER_TYPE)
    cds = await client.recv()
    assert cds.type_url == CLUSTER_TYPE and cds.nonce and cds.version_info
    assert cluster_names(cds) == ["model/housing", "model/housing@us-central1", "model/housing@us-east4"]
    assert types(plane)["Cluster"]["status"] == "STALE"
    client.ack(cds)
    client.send(ENDPOINT_TYPE, ["model/housing@us-east4"])
    eds = await client.recv()
    assert len(eds.resources) == 1  # only what was asked for
    assert types(plane)["Cluster"]["status"] == "SYNCED"
    assert types(plane)["Cluster"]["version_acked"] == cds.version_info


async def test_nack_is_recorded_and_never_answered_with_the_same_version(plane, client, plane_config):
    await sync(client)
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 5}}})
    assert await plane.reload()
    bad = await client.recv()
    assert bad.type_url == CLUSTER_TYPE
    client.send(CLUSTER_TYPE, version="", nonce=bad.nonce, error="cluster rejected: bad thing")
    await until(lambda: types(plane)["Cluster"]["status"] == "NACKED")
    state = types(plane)["Cluster"]
    assert state["nack_error"] == "cluster rejected: bad thing"
    assert plane.metrics.nacks.labels("Cluster")._value.get() == 1
    # a route-only edit: clusters are not ACKed, so routes wait, and the rejected CDS is not re-sent
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 5},
                                                                "timeout": "30s"}})
    assert await plane.reload()
    # the next different cluster version is sent; its ACK clears NACKED and releases the routes
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 7},
                                                                "timeout": "30s"}})
    assert await plane.reload()
    fixed = await client.recv()
    assert fixed.type_url == CLUSTER_TYPE and fixed.version_info != bad.version_info
    client.ack(fixed)
    routes = await client.recv()
    assert routes.type_url == ROUTE_TYPE
    client.ack(routes, ["vertex"])
    await until(lambda: types(plane)["RouteConfiguration"]["status"] == "SYNCED")
    assert types(plane)["Cluster"]["status"] == "SYNCED"


async def test_stale_nonce_is_ignored(plane, client, plane_config):
    client.send(CLUSTER_TYPE)
    first = await client.recv()
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 5}}})
    assert await plane.reload()
    second = await client.recv()
    assert second.nonce != first.nonce
    # an ACK of the first response arrives late: it must not mark the second one ACKed
    client.ack(first)
    client.send(ENDPOINT_TYPE, ["model/housing@us-east4"])
    await client.recv()
    state = types(plane)["Cluster"]
    assert state["status"] == "STALE" and state["version_acked"] == ""


async def test_routes_wait_for_their_clusters_and_removals_wait_for_routes(plane, client, plane_config):
    """Make-before-break: a new model's clusters and endpoints are ACKed before a route names
    them; a removed model's clusters go only after routes without it are ACKed."""
    await sync(client)
    extra = {"churn": {"endpoints": {"us-central1": "333", "us-east4": "444"}}}
    write_config(plane.config_path, {**plane_config, "models": {**plane_config["models"], **extra}})
    assert await plane.reload()
    cds = await client.recv()
    assert cds.type_url == CLUSTER_TYPE and "model/churn" in cluster_names(cds)
    client.ack(cds)
    eds_names = [n for n in cluster_names(cds) if "@" in n]
    client.send(ENDPOINT_TYPE, eds_names)  # Envoy subscribes to the new clusters' endpoints
    eds = await client.recv()
    assert eds.type_url == ENDPOINT_TYPE
    assert types(plane)["RouteConfiguration"]["status"] == "SYNCED"  # still the old routes
    client.ack(eds, eds_names)
    routes = await client.recv()
    assert routes.type_url == ROUTE_TYPE  # only now
    client.ack(routes, ["vertex"])
    # removal: routes first, clusters after their ACK
    write_config(plane.config_path, plane_config)
    assert await plane.reload()
    routes = await client.recv()
    assert routes.type_url == ROUTE_TYPE
    client.ack(routes, ["vertex"])
    cds = await client.recv()
    assert cds.type_url == CLUSTER_TYPE and "model/churn" not in cluster_names(cds)


async def test_reload_pushes_only_the_types_that_changed(plane, client, plane_config):
    routes = (await sync(client))[ROUTE_TYPE]
    write_config(plane.config_path, {**plane_config, "policy": {"timeout": "30s"}})
    assert await plane.reload()
    changed = await client.recv()
    assert changed.type_url == ROUTE_TYPE and changed.version_info != routes.version_info
    client.ack(changed, ["vertex"])
    assert plane.metrics.pushes.labels("Cluster", "sotw")._value.get() == 1


async def test_unknown_region_gets_nothing_and_says_why(plane):
    stranger = AdsClient(f"127.0.0.1:{plane.xds_port}", region="mars-north1", node_id="envoy-mars")
    try:
        stranger.send(CLUSTER_TYPE)
        with pytest.raises(asyncio.TimeoutError):
            await stranger.recv(timeout=0.5)
        entry = types(plane, "envoy-mars")
        assert entry["Cluster"]["status"] == "NOT_SENT"
        assert "mars-north1" in plane.clients.by_node("envoy-mars")[0].error
    finally:
        await stranger.close()


async def test_two_replicas_serve_identical_versions(plane, client, tmp_path):
    other = ControlPlane(plane.config_path, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", watch=False)
    await other.start()
    second = AdsClient(f"127.0.0.1:{other.xds_port}")
    try:
        for c in (client, second):
            c.send(CLUSTER_TYPE)
        a, b = await client.recv(), await second.recv()
        assert a.version_info == b.version_info
        assert a.resources == b.resources
    finally:
        await second.close()
        await other.stop()


async def test_rejected_reload_keeps_serving_the_old_config(plane, client, plane_config):
    client.send(CLUSTER_TYPE)
    cds = await client.recv()
    version = plane.cache.config.version
    plane.config_path.write_text("regions: [oops\n")
    assert not await plane.reload()
    assert plane.cache.config.version == version
    assert not plane.last_reload["ok"] and "invalid YAML" in plane.last_reload["errors"][0]
    assert plane.metrics.reloads.labels("failed")._value.get() == 1
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 5}}})
    assert await plane.reload()
    assert plane.last_reload["ok"]
    # The same stream is still open and served: the next thing it receives is the good
    # config's clusters (the rejected file pushed nothing).
    fresh = await client.recv()
    assert fresh.type_url == CLUSTER_TYPE and fresh.version_info != cds.version_info
    assert plane.metrics.pushes.labels("Cluster", "sotw")._value.get() == 2


async def test_a_config_that_cannot_be_built_consistently_is_rejected(tmp_path, plane_config):
    from control_plane.resources import build_resources

    broken = {"on": False}

    def builder(build, group):  # test hook: drop the route config the listener names
        built = build_resources(build, group)
        return {**built, ROUTE_TYPE: []} if broken["on"] else built

    path = write_config(tmp_path / "regions.yaml", plane_config)
    plane = ControlPlane(path, xds_address="127.0.0.1:0", admin_address="127.0.0.1:0", watch=False, builder=builder)
    version = plane.cache.config.version
    broken["on"] = True
    write_config(path, {**plane_config, "policy": {"timeout": "30s"}})
    assert not await plane.reload() and plane.cache.config.version == version
    assert "cannot build Envoy resources" in plane.last_reload["errors"][0]
    assert "needs route config" in plane.last_reload["errors"][0]
    assert plane.metrics.reloads.labels("failed")._value.get() == 1
    broken["on"] = False  # the same file, buildable again: the next reload applies it
    assert await plane.reload() and plane.cache.config.version != version


async def test_a_node_is_served_only_its_own_regions_token_secrets(tmp_path, token_server):
    """us-east4 calls Vertex with other credentials (profile b) and no us-central1 route reaches
    it: an Envoy in us-central1 that asks for token/b by name gets nothing."""
    from control_plane.resources import SECRET_TYPE, token_secret_name

    key = write_service_account_key(tmp_path / "key.json", token_server.token_uri)
    key_b = write_service_account_key(tmp_path / "key-b.json", token_server.token_uri)
    config = {**TWO_REGIONS, "auth": {"credentials": f"service_account:{key}",
                                      "profiles": {"b": {"credentials": f"service_account:{key_b}"}}},
              "regions": {"us-central1": {"address": "127.0.0.1", "port": 9001, "tls": False},
                          "us-east4": {"address": "127.0.0.2", "port": 9001, "tls": False, "auth": "b"}}}
    plane = ControlPlane(write_config(tmp_path / "regions.yaml", config), xds_address="127.0.0.1:0",
                         admin_address="127.0.0.1:0", watch=False)
    await plane.start()
    central = AdsClient(f"127.0.0.1:{plane.xds_port}", region="us-central1", node_id="envoy-us-central1")
    east = AdsClient(f"127.0.0.1:{plane.xds_port}", region="us-east4", node_id="envoy-us-east4")
    try:
        both = [token_secret_name("default"), token_secret_name("b")]
        central.send(SECRET_TYPE, both)
        assert [r.name for r in _secrets(await central.recv())] == [token_secret_name("default")]
        east.send(SECRET_TYPE, both)
        assert [r.name for r in _secrets(await east.recv())] == [token_secret_name("b")]
        # asking for only the other region's secret: an empty answer, never the token
        stranger = AdsClient(f"127.0.0.1:{plane.xds_port}", region="us-central1", node_id="envoy-x")
        try:
            stranger.send(SECRET_TYPE, [token_secret_name("b")])
            assert list((await stranger.recv()).resources) == []
        finally:
            await stranger.close()
    finally:
        await central.close()
        await east.close()
        await plane.stop()


def _secrets(response):
    from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

    out = []
    for packed in response.resources:
        secret = secret_pb2.Secret()
        packed.Unpack(secret)
        out.append(secret)
    return out
