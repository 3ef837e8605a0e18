"""A scripted Envoy on one ADS stream, state of the world or Delta: the tests drive it request
by request (send, recv, ack), and the benchmarks' simulated Envoys (bench/sim_envoy.py) build
on it to walk ADS as Envoy does. One client for both, so what the tests prove about the
protocol is what the benchmarks load.

The stream's node (id, `region` metadata and locality) is sent on its first request only, as
Envoy does.
"""

from __future__ import annotations

import asyncio

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

ADS_SERVICE = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
SOTW_METHOD = ADS_SERVICE + "StreamAggregatedResources"
DELTA_METHOD = ADS_SERVICE + "DeltaAggregatedResources"


def envoy_node(node_id: str, region: str) -> base_pb2.Node:
    """A node as the gateway's bootstrap describes an Envoy: its region in metadata and locality."""
    node = base_pb2.Node(id=node_id, cluster="vertex-gateway", metadata=struct_pb2.Struct(
        fields={"region": struct_pb2.Value(string_value=region)}))
    node.locality.region = region
    return node


class AdsClient:
    """One ADS stream. `target`: an address (the client opens and closes its own channel) or a
    grpc.aio channel shared with other clients. delta: DeltaAggregatedResources."""

    def __init__(self, target: str | grpc.aio.Channel, region: str = "us-central1", node_id: str = "envoy-test",
                 delta: bool = False):
        self._own_channel = isinstance(target, str)
        self.channel = grpc.aio.insecure_channel(target) if self._own_channel else target
        self.delta = delta
        self.node = envoy_node(node_id, region)
        self.requests: asyncio.Queue = asyncio.Queue()
        self.first = True
        if delta:
            self._request = discovery_pb2.DeltaDiscoveryRequest
            method, response = DELTA_METHOD, discovery_pb2.DeltaDiscoveryResponse
        else:
            self._request = discovery_pb2.DiscoveryRequest
            method, response = SOTW_METHOD, discovery_pb2.DiscoveryResponse
        call = self.channel.stream_stream(method, request_serializer=self._request.SerializeToString,
                                          response_deserializer=response.FromString)
        self.call = call(self._iterate())

    async def _iterate(self):
        while True:
            request = await self.requests.get()
            if request is None:
                return
            yield request

    def _put(self, request, error: str | None) -> None:
        if self.first:
            request.node.CopyFrom(self.node)
            self.first = False
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put_nowait(request)

    def send(self, type_url: str, names=(), version: str = "", nonce: str = "", error: str | None = None) -> None:
        """A SotW DiscoveryRequest: a subscription (names; none: wildcard), an ACK (the version
        and nonce of the response), or a NACK (with `error`)."""
        self._put(discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names),
                                                 version_info=version, response_nonce=nonce), error)

    def send_delta(self, type_url: str, subscribe=(), unsubscribe=(), nonce: str = "", error: str | None = None,
                   initial_versions: dict[str, str] | None = None) -> None:
        """A DeltaDiscoveryRequest: a (un)subscription, an ACK (the response's nonce) or a NACK."""
        self._put(discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(subscribe), resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce, initial_resource_versions=initial_versions or {}), error)

    async def recv(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.call.read(), timeout)

    def ack(self, response, names=()) -> None:
        if self.delta:
            self.send_delta(response.type_url, nonce=response.nonce)
        else:
            self.send(response.type_url, names, version=response.version_info, nonce=response.nonce)

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self.call.cancel()
        if self._own_channel:
            await self.channel.close()
