"""ADS sessions against a small fake cache (control_plane.xds_cache.XdsCache): the protocol
(versions, ACK/NACK, make-before-break, Delta reconnects) with no config, no OAuth server
and no whole control plane."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from control_plane.lab.ads_client import AdsClient
from control_plane.lab.harness import until
from control_plane.metrics import Metrics
from control_plane.server import AdsServer
from control_plane.status import ClientRegistry
from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

from .xds_fakes import Driver, FakeCache, cluster_names, sync


def test_sotw_walk_acks_and_a_change_pushes_only_what_changed():
    cache = FakeCache()
    d = Driver(cache)
    sync(d)
    cache.set(("a", "b"), route_tag="2")
    [rds] = d.changed()
    assert rds.type_url == ROUTE_TYPE
    assert d.status(ROUTE_TYPE) == "STALE"
    d.ack(rds, ["vertex"])
    assert d.status(ROUTE_TYPE) == "SYNCED"
    assert d.changed() == []  # nothing differs: nothing sent


def test_routes_wait_for_new_clusters_and_old_clusters_wait_for_routes():
    cache = FakeCache(("a", "b"))
    d = Driver(cache)
    sync(d)
    cache.set(("a", "c"))
    [cds] = d.changed()
    assert cluster_names(cds) == ["a", "b", "c"]  # the union: routes still name b
    assert d.ack(cds) == []  # routes wait for c's endpoints
    [eds] = d.request(ENDPOINT_TYPE, ["a", "b", "c"])
    [rds] = d.ack(eds, ["a", "b", "c"])
    assert rds.type_url == ROUTE_TYPE
    [cds] = d.ack(rds, ["vertex"])  # only once the new routes run is b removed
    assert cluster_names(cds) == ["a", "c"]


def test_routes_go_out_with_clusters_that_are_only_updated():
    """Envoy keeps serving an updated cluster's previous version while the new one warms: the
    routes need not wait a round trip for its ACK (a new cluster's, above, they do)."""
    cache = FakeCache(("a", "b"))
    d = Driver(cache)
    sync(d)
    cache.set(("a", "b"), route_tag="2", cluster_tag="v2")
    assert [r.type_url for r in d.changed()] == [CLUSTER_TYPE, ROUTE_TYPE]
    delta = Driver(cache, delta=True)
    [cds] = delta.request(CLUSTER_TYPE)
    delta.ack(cds)
    delta.ack(delta.request(ENDPOINT_TYPE, ["a", "b"])[0])
    delta.ack(delta.request(LISTENER_TYPE)[0])
    delta.ack(delta.request(ROUTE_TYPE, ["vertex"])[0])
    cache.set(("a", "b"), route_tag="3", cluster_tag="v3")
    assert [r.type_url for r in delta.changed()] == [CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE]


def test_a_nacked_version_is_not_sent_again_and_the_next_one_is():
    cache = FakeCache()
    d = Driver(cache)
    sync(d)
    cache.set(("a", "b"), route_tag="bad")
    [rds] = d.changed()
    assert d.request(ROUTE_TYPE, ["vertex"], version="", nonce=rds.nonce, error="bad route") == []
    assert d.status(ROUTE_TYPE) == "NACKED"
    assert d.stream.types[ROUTE_TYPE].nack_error == "bad route"
    assert d.changed() == []
    cache.set(("a", "b"), route_tag="good")
    [fixed] = d.changed()
    assert fixed.version_info != rds.version_info
    d.ack(fixed, ["vertex"])
    assert d.status(ROUTE_TYPE) == "SYNCED"


def test_a_stale_nonce_is_ignored():
    cache = FakeCache()
    d = Driver(cache)
    [first] = d.request(CLUSTER_TYPE)
    cache.set(("a", "b", "c"))
    [second] = d.changed()
    assert d.ack(first) == []
    assert d.status(CLUSTER_TYPE) == "STALE" and d.stream.types[CLUSTER_TYPE].acked_version == ""
    d.ack(second)
    assert d.status(CLUSTER_TYPE) == "SYNCED"


def test_nothing_is_sent_while_the_cache_is_not_ready_or_the_node_is_refused():
    cache = FakeCache()
    cache.waiting = "waiting for the first access token of auth profile(s) default"
    d = Driver(cache)
    assert d.request(CLUSTER_TYPE) == []
    assert d.stream.error == cache.waiting and d.status(CLUSTER_TYPE) == "NOT_SENT"
    cache.waiting = ""
    [cds] = d.changed()
    assert cds.type_url == CLUSTER_TYPE and d.stream.error == ""
    stranger = Driver(cache, region="mars")
    assert stranger.request(CLUSTER_TYPE) == []
    assert "mars" in stranger.stream.error


def test_delta_reconnect_holding_everything_is_sent_nothing():
    cache = FakeCache()
    d = Driver(cache, delta=True)
    [cds] = d.request(CLUSTER_TYPE)
    assert cluster_names(cds) == ["a", "b"]
    d.ack(cds)
    held = {r.name: r.version for r in cds.resources}
    again = Driver(cache, delta=True)
    assert again.request(CLUSTER_TYPE, initial_resource_versions=held) == []
    assert again.status(CLUSTER_TYPE) == "SYNCED"
    cache.set(("a",))
    [update] = again.changed()
    assert list(update.removed_resources) == ["b"] and cluster_names(update) == []  # a: held already


def test_delta_updated_cluster_gets_its_endpoints_again_and_an_ack_sends_nothing():
    cache = FakeCache()
    d = Driver(cache, delta=True)
    [cds] = d.request(CLUSTER_TYPE)
    assert d.ack(cds) == []
    [eds] = d.request(ENDPOINT_TYPE, ["a", "b"])
    assert d.ack(eds) == []  # nothing new: nothing sent
    cache.set(("a", "b"), cluster_tag="v2")  # the clusters change, their endpoints do not
    [cds2, eds2] = d.changed()
    assert (cds2.type_url, eds2.type_url) == (CLUSTER_TYPE, ENDPOINT_TYPE)
    assert sorted(r.name for r in eds2.resources) == ["a", "b"]  # re-sent: an updated EDS cluster warms on them
    assert d.ack(cds2) == [] and d.ack(eds2) == []
    assert d.changed() == []


def test_delta_nack_keeps_what_the_client_held_and_resends_or_removes_what_it_may_have_applied():
    cache = FakeCache()
    d = Driver(cache, delta=True)
    [cds] = d.request(CLUSTER_TYPE)
    d.ack(cds)
    cache.set(("a", "b", "c"))
    [bad] = d.changed()
    assert cluster_names(bad) == ["c"]
    d.request(CLUSTER_TYPE, nonce=bad.nonce, error="rejected")
    assert d.status(CLUSTER_TYPE) == "NACKED"
    cache.set(("a", "b", "d"))
    [next_] = d.changed()
    assert cluster_names(next_) == ["d"]  # a and b, held before, are not sent again
    # Envoy applies the good clusters of a NACKed response: c may be there, so it is removed
    assert list(next_.removed_resources) == ["c"]


GENERIC_LAYERS = ("xds_types", "xds_cache", "snapshot", "subscription", "status", "csds", "sessions", "server",
                  "responses", "heap")


def test_the_generic_xds_layers_do_not_import_the_gateway_domain():
    """The server, its records and the snapshot know type URLs from xds_types only: nothing
    of how the gateway's resources are built (control_plane.resources, config, cache)."""
    import ast
    import pathlib

    import control_plane
    root = pathlib.Path(control_plane.__file__).parent
    for module in GENERIC_LAYERS:
        tree = ast.parse((root / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level}
        assert not imported & {"resources", "config", "cache", "app"}, (module, imported)


def test_the_domain_names_the_same_types_in_the_same_order():
    from control_plane import resources, xds_types
    for name in ("LISTENER_TYPE", "ROUTE_TYPE", "CLUSTER_TYPE", "ENDPOINT_TYPE", "SECRET_TYPE", "PUSH_ORDER"):
        assert getattr(resources, name) == getattr(xds_types, name)


# ---------------------------------------------------------------------- over real gRPC


@pytest.fixture
async def served():
    """An AdsServer on a fake cache, on a real grpc.aio server (127.0.0.1, ephemeral port)."""
    cache = FakeCache()
    ads = AdsServer(cache, ClientRegistry(), Metrics())
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((ads.rpc_handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    clients: list[AdsClient] = []

    def connect(node_id: str = "envoy-test", region: str = "r1") -> AdsClient:
        clients.append(AdsClient(f"127.0.0.1:{port}", region=region, node_id=node_id))
        return clients[-1]

    yield cache, ads, connect
    for client in clients:
        await client.close()
    await server.stop(grace=0)


async def test_a_replica_at_its_stream_cap_refuses_the_next_stream_until_one_closes(served):
    cache, ads, connect = served
    ads.max_streams = 1
    first = connect("envoy-1")
    first.send(CLUSTER_TYPE)
    assert (await first.recv()).type_url == CLUSTER_TYPE
    second = connect("envoy-2")
    second.send(CLUSTER_TYPE)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second.recv()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "maximum of 1 xDS streams" in refused.value.details()
    assert ads.metrics.refused._value.get() == 1
    assert [s.node_id for s in ads.clients.streams()] == ["envoy-1"]
    await first.close()
    await until(lambda: ads.open_streams == 0)
    third = connect("envoy-3")
    third.send(CLUSTER_TYPE)
    assert (await third.recv()).type_url == CLUSTER_TYPE  # room again: served


async def test_many_changes_reach_a_stream_as_one_push(served):
    cache, ads, connect = served
    client = connect()
    client.send(CLUSTER_TYPE)
    client.ack(await client.recv())
    client.send(ENDPOINT_TYPE, ["a", "b"])
    client.ack(await client.recv(), ["a", "b"])
    client.send(LISTENER_TYPE)
    client.ack(await client.recv())
    client.send(ROUTE_TYPE, ["vertex"])
    first_routes = await client.recv()
    client.ack(first_routes, ["vertex"])
    await until(lambda: ads.clients.streams()[0].types[ROUTE_TYPE].acked_latest)
    for i in range(50):  # fifty generations before the stream gets to run
        cache.set(("a", "b"), route_tag=f"edit-{i}")
    routes = await client.recv()
    assert routes.type_url == ROUTE_TYPE and "edit-49" in str(routes.resources[0].value)
    client.ack(routes, ["vertex"])
    with pytest.raises(asyncio.TimeoutError):
        await client.recv(timeout=0.3)  # nothing for the 49 generations in between
    assert ads.metrics.pushes.labels("RouteConfiguration", "sotw")._value.get() == 2
