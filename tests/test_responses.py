"""What streams share: responses built once per version and joined once with one nonce for
every stream sent them, Delta clients' held maps, subscribed-name sets; and what a stream leaves
behind once a response is out (control_plane/responses.py, server.Outgoing,
subscription.shared_names, heap.py)."""

from __future__ import annotations

import asyncio
import weakref

import pytest
from envoy.service.discovery.v3 import discovery_pb2

from control_plane import heap
from control_plane.heap import HeapTrimmer
from control_plane.lab.harness import until
from control_plane.metrics import Metrics
from control_plane.server import AdsServer, Outgoing, take
from control_plane.status import ClientRegistry
from control_plane.subscription import shared_names
from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE

from .xds_fakes import Driver, FakeCache, cluster_names


def test_delta_streams_of_a_group_share_one_diff_and_one_held_map():
    cache = FakeCache(("a", "b"))
    server = AdsServer(cache, ClientRegistry(), Metrics())
    one, two = Driver(cache, delta=True, server=server), Driver(cache, delta=True, server=server)
    [cds1], [cds2] = one.request(CLUSTER_TYPE), two.request(CLUSTER_TYPE)
    assert cluster_names(cds1) == cluster_names(cds2) == ["a", "b"]
    assert cds1 == cds2  # the same response, nonce included (Responses.finished)
    assert one.stream.types[CLUSTER_TYPE].client is two.stream.types[CLUSTER_TYPE].client
    one.ack(cds1), two.ack(cds2)
    cache.set(("a", "c"), route_tag="2")
    [edit1], [edit2] = one.changed(), two.changed()
    assert list(edit1.removed_resources) == list(edit2.removed_resources) == ["b"]
    assert cluster_names(edit1) == cluster_names(edit2) == ["c"]
    assert one.stream.types[CLUSTER_TYPE].client is two.stream.types[CLUSTER_TYPE].client
    assert dict(one.stream.types[CLUSTER_TYPE].client) == {r.name: r.version for r in cache.resources[CLUSTER_TYPE].values()}


def test_a_held_map_is_never_changed_in_place():
    cache = FakeCache(("a", "b"))
    server = AdsServer(cache, ClientRegistry(), Metrics())
    one, two = Driver(cache, delta=True, server=server), Driver(cache, delta=True, server=server)
    for d in (one, two):
        d.ack(d.request(CLUSTER_TYPE)[0])
        d.ack(d.request(ENDPOINT_TYPE, ["a", "b"])[0])
    shared = one.stream.types[ENDPOINT_TYPE].client
    assert shared is two.stream.types[ENDPOINT_TYPE].client
    # `one` asks for a's endpoints again: it is sent them; `two` still holds them as before.
    [again] = one.request(ENDPOINT_TYPE, ["a"])
    assert [r.name for r in again.resources] == ["a"]
    assert two.stream.types[ENDPOINT_TYPE].client is shared and set(shared) == {"a", "b"}
    assert two.request(ENDPOINT_TYPE, []) == []


def _raw(driver: Driver, type_url: str, nonce: str = "", version: str = "") -> list[bytes]:
    """The session's responses as handed to gRPC."""
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce, version_info=version)
    return list(driver.session.on_request(request))


def test_sotw_streams_of_a_group_are_handed_the_same_response_object():
    """One join per version for all the streams of a node group (at 1,000 models x 5 regions a
    response is 14 MB: joining it once per stream was a third of an edit's CPU at 100 Envoys)."""
    cache = FakeCache(("a", "b"))
    server = AdsServer(cache, ClientRegistry(), Metrics())
    one, two = Driver(cache, server=server), Driver(cache, server=server)
    [a], [b] = _raw(one, CLUSTER_TYPE), _raw(two, CLUSTER_TYPE)
    assert a is b
    sent = discovery_pb2.DiscoveryResponse.FromString(a)
    # ACKed, then asked again on that nonce (Envoy wants it re-sent): the same content with
    # another nonce, so that the stream can tell its answers apart; the other stream's ACK of
    # the shared nonce still counts.
    assert _raw(one, CLUSTER_TYPE, nonce=sent.nonce, version=sent.version_info) == []
    [again] = _raw(one, CLUSTER_TYPE, nonce=sent.nonce, version=sent.version_info)
    resent = discovery_pb2.DiscoveryResponse.FromString(again)
    assert resent.nonce != sent.nonce and resent.version_info == sent.version_info
    assert _raw(two, CLUSTER_TYPE, nonce=sent.nonce, version=sent.version_info) == []
    assert two.status(CLUSTER_TYPE) == "SYNCED"
    # An edit: a new response, with a nonce neither stream was sent before.
    cache.set(("a", "c"), route_tag="2")
    [edit1], [edit2] = one.session.on_change(), two.session.on_change()
    assert edit1 is edit2
    assert discovery_pb2.DiscoveryResponse.FromString(edit1).nonce not in (sent.nonce, resent.nonce)


async def test_the_joined_responses_are_dropped_once_xds_work_is_quiet():
    cache = FakeCache(("a", "b"))
    server = AdsServer(cache, ClientRegistry(), Metrics())
    server.heap.quiet = 0.05
    one = Driver(cache, server=server)
    _raw(one, CLUSTER_TYPE)
    assert server.responses._finished
    server.heap.busy()
    await until(lambda: not server.responses._finished)


def test_a_response_handed_to_grpc_leaves_an_empty_holder():
    data = discovery_pb2.DiscoveryResponse(version_info="v", nonce="1").SerializeToString()
    holder = Outgoing(data)
    assert take(holder) is data
    assert holder.data == b""  # what grpc.aio keeps of a stream's last response until the next one


def test_equal_subscriptions_share_one_name_set():
    assert shared_names(["a", "b"]) is shared_names(("b", "a", "a"))
    assert shared_names([]) is shared_names(set())


@pytest.mark.skipif(heap._TRIM is None, reason="no glibc malloc_trim here")
async def test_the_heap_is_trimmed_once_after_a_burst_goes_quiet():
    trimmer = HeapTrimmer(quiet=0.05)
    for _ in range(1000):
        trimmer.busy()
    await until(lambda: trimmer.trims == 1)
    trimmer.busy()
    await until(lambda: trimmer.trims == 2)
    assert trimmer._timer is None  # nothing left scheduled


async def test_what_a_reload_replaced_is_freed_once_the_push_is_over():
    """SnapshotCache.apply hands the config and snapshots it replaces to the server's
    HeapTrimmer: freeing them (0.1 s at 1,000 models) must not delay the push."""
    trimmer = HeapTrimmer(quiet=0.05)

    class Garbage:
        pass

    garbage = Garbage()
    freed = weakref.ref(garbage)
    trimmer.retire(garbage)
    del garbage
    trimmer.busy()  # the push
    assert freed() is not None
    await until(lambda: freed() is None)
    assert trimmer._timer is None


def test_without_an_event_loop_a_replaced_config_is_freed_at_once():
    trimmer = HeapTrimmer(quiet=0.05)
    trimmer.retire(object())
    assert trimmer._retired == []


def test_a_resource_is_framed_for_sotw_and_delta_as_protobuf_would_serialize_it():
    from envoy.config.cluster.v3 import cluster_pb2

    from control_plane.snapshot import Interner

    for size in (10, 200, 20_000):  # one-, two- and three-byte lengths
        resource = Interner().intern(CLUSTER_TYPE, cluster_pb2.Cluster(name="c", alt_stat_name="x" * size))
        sotw = discovery_pb2.DiscoveryResponse()
        sotw.resources.add().ParseFromString(resource.any_bytes)
        assert resource.response_entry == sotw.SerializeToString(deterministic=True)
        delta = discovery_pb2.DeltaDiscoveryResponse()
        delta.resources.add(name="c", version=resource.version).resource.ParseFromString(resource.any_bytes)
        assert resource.delta_entry == delta.SerializeToString(deterministic=True)
        assert b"".join(resource.delta_parts) == resource.delta_entry


async def test_nothing_is_freed_while_a_reload_builds():
    trimmer = HeapTrimmer(quiet=0.02)

    class Garbage:
        pass

    with trimmer.holding():
        garbage = Garbage()
        freed = weakref.ref(garbage)
        trimmer.retire(garbage)
        del garbage
        await asyncio.sleep(0.1)  # quiet for five times `quiet`, but held
        assert freed() is not None
    await until(lambda: freed() is None)
