"""CSDS over real gRPC: a control plane, scripted ADS clients, and a plain CSDS client."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.matcher.v3 import struct_pb2 as struct_matcher_pb2

from control_plane.lab.ads_client import AdsClient
from control_plane.lab.harness import write_config
from control_plane.resources import CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE, SECRET_TYPE, token_secret_name

from .ads_steps import sync
from .xds_fakes import cluster_names

FETCH = "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"
ACKED, NACKED, REQUESTED = config_dump_shared_pb2.ACKED, config_dump_shared_pb2.NACKED, config_dump_shared_pb2.REQUESTED


@pytest.fixture
async def csds(plane):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.xds_port}")
    yield csds_pb2_grpc.ClientStatusDiscoveryServiceStub(channel), channel
    await channel.close()


@pytest.fixture
async def envoys(plane):
    opened: list[AdsClient] = []

    def connect(node_id: str = "envoy-test", region: str = "us-central1") -> AdsClient:
        client = AdsClient(f"127.0.0.1:{plane.xds_port}", region=region, node_id=node_id)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()


def entries(response: csds_pb2.ClientStatusResponse, node_id: str, type_url: str | None = None) -> dict:
    """name -> GenericXdsConfig for one node (and type)."""
    configs = [c for c in response.config if c.node.id == node_id]
    assert len(configs) == 1, [c.node.id for c in response.config]
    return {g.name: g for g in configs[0].generic_xds_configs if type_url in (None, g.type_url)}


def resource_versions(response) -> dict[str, str]:
    """name -> version as the control plane defines it: hash of the resource's serialized bytes."""
    versions = {}
    for any_msg in response.resources:
        cluster = cluster_pb2.Cluster()
        any_msg.Unpack(cluster)
        versions[cluster.name] = hashlib.sha256(any_msg.value).hexdigest()[:16]
    return versions


async def fetch_until(stub, condition, request=None, timeout: float = 5.0) -> csds_pb2.ClientStatusResponse:
    """Fetch until `condition(response)` holds: the ADS answer is processed on the server's loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await stub.FetchClientStatus(request or csds_pb2.ClientStatusRequest(), timeout=5)
        try:
            if condition(response):
                return response
        except (AssertionError, KeyError):
            pass
        assert asyncio.get_running_loop().time() < deadline, f"CSDS never showed the expected state:\n{response}"
        await asyncio.sleep(0.01)


def node_id_matcher(**string_match) -> node_pb2.NodeMatcher:
    return node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher(**string_match))


async def test_fetch_and_stream_list_the_node_its_resources_and_acks(plane, csds, envoys):
    stub, _ = csds
    client = envoys()
    client.send(CLUSTER_TYPE)
    cds = await client.recv()
    # sent, not answered yet: every cluster STALE / REQUESTED, at the version sent
    stale = entries(await stub.FetchClientStatus(csds_pb2.ClientStatusRequest()), "envoy-test", CLUSTER_TYPE)
    assert {n: (g.config_status, g.client_status) for n, g in stale.items()} == {
        n: (csds_pb2.STALE, REQUESTED) for n in cluster_names(cds)}
    client.ack(cds)
    response = await fetch_until(stub, lambda r: all(
        g.client_status == ACKED for g in entries(r, "envoy-test", CLUSTER_TYPE).values()))
    [config] = response.config
    assert config.node.id == "envoy-test"
    assert config.node.metadata.fields["region"].string_value == "us-central1"
    clusters = entries(response, "envoy-test", CLUSTER_TYPE)
    assert sorted(clusters) == ["model/housing", "model/housing@us-central1", "model/housing@us-east4"]
    assert {n: g.version_info for n, g in clusters.items()} == resource_versions(cds)
    for entry in clusters.values():
        assert entry.type_url == CLUSTER_TYPE
        assert entry.config_status == csds_pb2.SYNCED and entry.client_status == ACKED
        assert entry.last_updated.seconds > 0 and not entry.HasField("error_state")
        assert not entry.HasField("xds_config")  # names and versions, never contents

    # the same answer over the streaming RPC, one response per request
    call = stub.StreamClientStatus()
    await call.write(csds_pb2.ClientStatusRequest())
    streamed = await asyncio.wait_for(call.read(), 5)
    assert streamed == response
    await call.write(csds_pb2.ClientStatusRequest(node_matchers=[node_id_matcher(exact="nobody")]))
    assert list((await asyncio.wait_for(call.read(), 5)).config) == []
    await call.done_writing()
    assert await asyncio.wait_for(call.read(), 5) == grpc.aio.EOF


async def test_a_nack_shows_as_nacked_with_envoys_error(plane, plane_config, csds, envoys):
    stub, _ = csds
    client = envoys()
    await sync(client)
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 5}}})
    assert await plane.reload()
    bad = await client.recv()
    assert bad.type_url == CLUSTER_TYPE
    client.send(CLUSTER_TYPE, nonce=bad.nonce, error="cluster model/housing@us-east4: bad outlier detection")
    response = await fetch_until(stub, lambda r: all(
        g.client_status == NACKED for g in entries(r, "envoy-test", CLUSTER_TYPE).values()))
    clusters = entries(response, "envoy-test", CLUSTER_TYPE)
    assert {n: g.version_info for n, g in clusters.items()} == resource_versions(bad)
    for entry in clusters.values():
        assert entry.config_status == csds_pb2.ERROR
        assert entry.error_state.details == "cluster model/housing@us-east4: bad outlier detection"
        assert entry.error_state.version_info == bad.version_info
        assert entry.error_state.last_update_attempt.seconds > 0
    # the other types were not touched by the NACK
    for type_url in (ENDPOINT_TYPE, ROUTE_TYPE):
        for entry in entries(response, "envoy-test", type_url).values():
            assert entry.client_status == ACKED and entry.config_status == csds_pb2.SYNCED
            assert not entry.HasField("error_state")
    assert set(entries(response, "envoy-test", ROUTE_TYPE)) == {"vertex"}


async def test_node_matchers_select_nodes(plane, csds, envoys):
    stub, _ = csds
    central, east = envoys("envoy-central-1"), envoys("edge-east-1", region="us-east4")
    for client in (central, east):
        client.send(CLUSTER_TYPE)
        client.ack(await client.recv())
    await fetch_until(stub, lambda r: len(r.config) == 2)

    async def node_ids(*matchers: node_pb2.NodeMatcher) -> list[str]:
        response = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(node_matchers=matchers))
        return sorted(c.node.id for c in response.config)

    assert await node_ids() == ["edge-east-1", "envoy-central-1"]  # no matchers: every node
    assert await node_ids(node_id_matcher(exact="edge-east-1")) == ["edge-east-1"]
    assert await node_ids(node_id_matcher(exact="edge-east")) == []
    assert await node_ids(node_id_matcher(prefix="envoy-")) == ["envoy-central-1"]
    assert await node_ids(node_id_matcher(suffix="-1")) == ["edge-east-1", "envoy-central-1"]
    assert await node_ids(node_id_matcher(exact="EDGE-EAST-1", ignore_case=True)) == ["edge-east-1"]
    assert await node_ids(node_id_matcher(safe_regex=regex_pb2.RegexMatcher(regex="edge-.*"))) == ["edge-east-1"]
    # several matchers: OR
    assert await node_ids(node_id_matcher(exact="edge-east-1"), node_id_matcher(prefix="envoy-c")) == [
        "edge-east-1", "envoy-central-1"]
    # by bootstrap metadata: the region
    by_region = node_pb2.NodeMatcher(node_metadatas=[struct_matcher_pb2.StructMatcher(
        path=[struct_matcher_pb2.StructMatcher.PathSegment(key="region")],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact="us-east4")))])
    assert await node_ids(by_region) == ["edge-east-1"]
    # both parts of one matcher must hold
    by_region.node_id.CopyFrom(string_pb2.StringMatcher(prefix="envoy-"))
    assert await node_ids(by_region) == []
    # a matcher that cannot be evaluated is refused, not silently matched against nothing
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await node_ids(node_pb2.NodeMatcher(node_id=string_pb2.StringMatcher()))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_names_asked_for_but_not_sent_are_listed_as_not_sent(plane, csds, envoys):
    stub, _ = csds
    stranger = envoys("envoy-mars", region="mars-north1")  # unknown region: served nothing
    stranger.send(ENDPOINT_TYPE, ["model/housing@us-east4"])
    response = await fetch_until(stub, lambda r: entries(r, "envoy-mars"))
    [entry] = entries(response, "envoy-mars").values()
    assert (entry.type_url, entry.name, entry.version_info) == (ENDPOINT_TYPE, "model/housing@us-east4", "")
    assert entry.config_status == csds_pb2.NOT_SENT and entry.client_status == REQUESTED


async def test_secrets_are_listed_without_their_content(plane, csds, envoys, token_server):
    stub, channel = csds
    client = envoys()
    secret = token_secret_name("default")
    client.send(SECRET_TYPE, [secret])
    sds = await client.recv()
    token = token_server.issued[-1]
    assert token and token.encode() in sds.SerializeToString()  # the token really went to the Envoy
    client.ack(sds, [secret])
    response = await fetch_until(stub, lambda r: entries(r, "envoy-test", SECRET_TYPE)[secret].client_status == ACKED)
    entry = entries(response, "envoy-test", SECRET_TYPE)[secret]
    assert entry.version_info == hashlib.sha256(sds.resources[0].value).hexdigest()[:16]
    assert not entry.HasField("xds_config")
    # the bytes on the wire, from both RPCs, never carry the token
    raw = await channel.unary_unary(FETCH, request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
                                    response_deserializer=None)(csds_pb2.ClientStatusRequest(), timeout=5)
    assert secret.encode() in raw and token.encode() not in raw
    call = stub.StreamClientStatus()
    await call.write(csds_pb2.ClientStatusRequest())
    streamed = await asyncio.wait_for(call.read(), 5)
    await call.done_writing()
    assert token.encode() not in streamed.SerializeToString()
    assert "Bearer" not in str(streamed)


async def test_a_backtracking_regex_is_evaluated_in_linear_time(plane, csds, envoys):
    """RE2 semantics: `(a+)+$` against a 26-character node id froze the loop for seconds with `re`."""
    stub, _ = csds
    client = envoys("a" * 26 + "!")
    client.send(CLUSTER_TYPE)
    client.ack(await client.recv())
    await fetch_until(stub, lambda r: len(r.config) == 1)
    started = asyncio.get_running_loop().time()
    response = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(node_matchers=[
        node_id_matcher(safe_regex=regex_pb2.RegexMatcher(regex="(a+)+$"))]), timeout=5)
    assert list(response.config) == []
    assert asyncio.get_running_loop().time() - started < 1.0
    # what RE2 cannot compile (a backreference) is refused, like a malformed regex
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.FetchClientStatus(csds_pb2.ClientStatusRequest(node_matchers=[
            node_id_matcher(safe_regex=regex_pb2.RegexMatcher(regex=r"(a)\1"))]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_nack_text_is_truncated_and_escaped_everywhere(plane, plane_config, csds, envoys, caplog):
    """A NACK's error is the Envoy's (or an impostor's) text: a newline must not forge a log
    line, and 100 KB must not make a 100 KB one, in the log, /debug/clients or CSDS."""
    stub, _ = csds
    client = envoys()
    await sync(client)
    write_config(plane.config_path, {**plane_config, "policy": {"outlier_detection": {"consecutive_5xx": 6}}})
    assert await plane.reload()
    bad = await client.recv()
    forged = "bad cluster\n2026-01-01 00:00:00 INFO control_plane.app: config reloaded\x1b[31m" + "x" * 100_000
    client.send(CLUSTER_TYPE, nonce=bad.nonce, error=forged)
    response = await fetch_until(stub, lambda r: all(
        g.client_status == NACKED for g in entries(r, "envoy-test", CLUSTER_TYPE).values()))
    for entry in entries(response, "envoy-test", CLUSTER_TYPE).values():
        details = entry.error_state.details
        assert details.startswith("bad cluster\\n2026-01-01 00:00:00 INFO") and "\x1b" not in details
        assert "\n" not in details and len(details) < 5000 and "more characters]" in details
    shown = plane.clients.by_node("envoy-test")[0].to_dict()["types"]["Cluster"]["nack_error"]
    assert shown == details
    nack_lines = [r.getMessage() for r in caplog.records if "NACKed" in r.getMessage()]
    assert nack_lines and all("\n" not in line and len(line) < 5000 for line in nack_lines)
