"""Simulated Envoys for bench/controlplane.py (ii) and bench/cp_memory.py: the request order
and ACKs of a real Envoy on one ADS stream, state of the world (SimEnvoy) or Delta
(DeltaSimEnvoy), cheap enough to run 1,000 in one process."""

from __future__ import annotations

import asyncio
import time

from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
TOKEN_SECRET = "token/default"


class SimEnvoy:
    """One simulated Envoy on an ADS SotW stream: the request order and ACKs of a real one."""

    def __init__(self, channel, node_id: str, region: str, parsed: dict, sds: bool):
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf import struct_pb2

        self._req_type = discovery_pb2.DiscoveryRequest
        self.node = base_pb2.Node(id=node_id, cluster="vertex-gateway", metadata=struct_pb2.Struct(
            fields={"region": struct_pb2.Value(string_value=region)}))
        self.node.locality.region = region
        self.parsed = parsed  # shared cache: CDS version -> (EDS cluster names, per-cluster digests)
        self.sds = sds
        self.queue: asyncio.Queue = asyncio.Queue()
        self.first = True
        self.version: dict[str, str] = {}  # type -> last ACKed version
        self.nonce: dict[str, str] = {}  # type -> last nonce answered
        self.eds_names: list[str] = []
        self.cluster_digests: dict[str, bytes] = {}
        self.pending: set[str] = set()  # types asked for and not yet answered
        self.responses = 0
        self.acks = 0
        self.last_ack_at = 0.0
        self.synced = asyncio.Event()
        self.error = ""
        call = channel.stream_stream(ADS_METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                     response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
        self.call = call(self._requests())

    async def _requests(self):
        while True:
            request = await self.queue.get()
            if request is None:
                return
            yield request

    def send(self, type_url: str, names=(), version: str = "", nonce: str = "") -> None:
        request = self._req_type(type_url=type_url, resource_names=list(names), version_info=version,
                                 response_nonce=nonce)
        if self.first:
            request.node.CopyFrom(self.node)
            self.first = False
        self.queue.put_nowait(request)

    def _clusters(self, response) -> tuple[list[str], dict[str, bytes]]:
        found = self.parsed.get(response.version_info)
        if found is None:
            from envoy.config.cluster.v3 import cluster_pb2
            names, digests = [], {}
            for res in response.resources:
                cluster = cluster_pb2.Cluster()
                res.Unpack(cluster)
                digests[cluster.name] = res.value
                if cluster.type == cluster_pb2.Cluster.EDS:
                    names.append(cluster.eds_cluster_config.service_name or cluster.name)
            found = self.parsed[response.version_info] = (sorted(names), digests)
        return found

    async def run(self) -> None:
        try:
            self.send(CLUSTER_TYPE)
            self.pending.add(CLUSTER_TYPE)
            async for response in self.call:
                self.on_response(response)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001  (grpc.aio raises AioRpcError on a cancelled/closed stream)
            self.error = repr(exc)[:300]

    def on_response(self, response) -> None:
        t = response.type_url
        self.responses += 1
        self.pending.discard(t)
        names: list[str] = []
        follow: list[tuple] = []
        if t == CLUSTER_TYPE:
            eds_names, digests = self._clusters(response)
            changed = [n for n, d in digests.items() if n in self.cluster_digests and self.cluster_digests[n] != d]
            first = not self.cluster_digests
            self.cluster_digests = digests
            if first or eds_names != self.eds_names or any(n in eds_names for n in changed):
                # a new or updated EDS cluster warms only on a fresh EDS response: (re)subscribe
                self.eds_names = eds_names
                follow.append((ENDPOINT_TYPE, eds_names))
            if first and self.sds:
                follow.append((SECRET_TYPE, [TOKEN_SECRET]))
        elif t == ENDPOINT_TYPE:
            names = self.eds_names
            if LISTENER_TYPE not in self.version and LISTENER_TYPE not in self.pending:
                follow.append((LISTENER_TYPE, []))
        elif t == SECRET_TYPE:
            names = [TOKEN_SECRET]
        elif t == LISTENER_TYPE:
            if ROUTE_TYPE not in self.version and ROUTE_TYPE not in self.pending:
                follow.append((ROUTE_TYPE, ["vertex"]))
        elif t == ROUTE_TYPE:
            names = ["vertex"]
        self.send(t, names, response.version_info, response.nonce)  # ACK
        self.version[t], self.nonce[t] = response.version_info, response.nonce
        self.acks += 1
        self.last_ack_at = time.monotonic()
        for type_url, follow_names in follow:
            self.send(type_url, follow_names, self.version.get(type_url, ""), self.nonce.get(type_url, ""))
            self.pending.add(type_url)
        if ROUTE_TYPE in self.version and not self.pending:
            self.synced.set()

    def settled_on(self, base: dict[str, str]) -> bool:
        """ACKed clusters and routes different from `base`, nothing outstanding."""
        return (not self.pending and self.version.get(CLUSTER_TYPE) != base.get(CLUSTER_TYPE)
                and self.version.get(ROUTE_TYPE) != base.get(ROUTE_TYPE))

    async def close(self) -> None:
        self.queue.put_nowait(None)
        self.call.cancel()


class DeltaSimEnvoy:
    """One simulated Envoy on an ADS Delta stream: subscribes as Envoy does (clusters and
    listeners by wildcard, endpoints, the token secret and routes by name), ACKs every
    response with its nonce, follows cluster additions and removals with endpoint
    (un)subscriptions. An updated EDS cluster's endpoints are the server's to re-send."""

    def __init__(self, channel, node_id: str, region: str, parsed: dict, sds: bool):
        from envoy.config.core.v3 import base_pb2
        from envoy.service.discovery.v3 import discovery_pb2
        from google.protobuf import struct_pb2

        self._req_type = discovery_pb2.DeltaDiscoveryRequest
        self.node = base_pb2.Node(id=node_id, cluster="vertex-gateway", metadata=struct_pb2.Struct(
            fields={"region": struct_pb2.Value(string_value=region)}))
        self.node.locality.region = region
        self.parsed = parsed  # shared cache: (cluster name, resource version) -> EDS service name or ""
        self.sds = sds
        self.queue: asyncio.Queue = asyncio.Queue()
        self.first = True
        self.version: dict[str, str] = {}  # type -> system_version_info of the last response
        self.clusters: dict[str, str] = {}  # cluster name -> EDS service name ("" if not EDS)
        self.eds_names: set[str] = set()
        self.pending: set[str] = set()
        self.responses = 0
        self.acks = 0
        self.last_ack_at = 0.0
        self.synced = asyncio.Event()
        self.error = ""
        call = channel.stream_stream(DELTA_METHOD, request_serializer=self._req_type.SerializeToString,
                                     response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString)
        self.call = call(self._requests())

    async def _requests(self):
        while True:
            request = await self.queue.get()
            if request is None:
                return
            yield request

    def send(self, type_url: str, subscribe=(), unsubscribe=(), nonce: str = "") -> None:
        request = self._req_type(type_url=type_url, resource_names_subscribe=list(subscribe),
                                 resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce)
        if self.first:
            request.node.CopyFrom(self.node)
            self.first = False
        self.queue.put_nowait(request)

    def _eds_name(self, resource) -> str:
        key = (resource.name, resource.version)
        found = self.parsed.get(key)
        if found is None:
            from envoy.config.cluster.v3 import cluster_pb2
            cluster = cluster_pb2.Cluster()
            resource.resource.Unpack(cluster)
            found = self.parsed[key] = (cluster.eds_cluster_config.service_name or cluster.name
                                        if cluster.type == cluster_pb2.Cluster.EDS else "")
        return found

    async def run(self) -> None:
        try:
            self.send(CLUSTER_TYPE)
            self.pending.add(CLUSTER_TYPE)
            async for response in self.call:
                self.on_response(response)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001  (grpc.aio raises AioRpcError on a cancelled/closed stream)
            self.error = repr(exc)[:300]

    def on_response(self, response) -> None:
        t = response.type_url
        self.responses += 1
        self.pending.discard(t)
        follow: list[tuple] = []
        if t == CLUSTER_TYPE:
            first = not self.clusters
            for name in response.removed_resources:
                self.clusters.pop(name, None)
            for resource in response.resources:
                self.clusters[resource.name] = self._eds_name(resource)
            wanted = {n for n in self.clusters.values() if n}
            add, drop = sorted(wanted - self.eds_names), sorted(self.eds_names - wanted)
            self.eds_names = wanted
            if add or drop:
                follow.append((ENDPOINT_TYPE, add, drop))
            if first and self.sds:
                follow.append((SECRET_TYPE, [TOKEN_SECRET], []))
        elif t == ENDPOINT_TYPE:
            if LISTENER_TYPE not in self.version and LISTENER_TYPE not in self.pending:
                follow.append((LISTENER_TYPE, [], []))
        elif t == LISTENER_TYPE:
            if ROUTE_TYPE not in self.version and ROUTE_TYPE not in self.pending:
                follow.append((ROUTE_TYPE, ["vertex"], []))
        self.send(t, nonce=response.nonce)  # ACK
        self.version[t] = response.system_version_info
        self.acks += 1
        self.last_ack_at = time.monotonic()
        for type_url, add, drop in follow:
            self.send(type_url, add, drop)
            if add or type_url == LISTENER_TYPE:  # (an unsubscription alone is not answered)
                self.pending.add(type_url)
        if ROUTE_TYPE in self.version and not self.pending:
            self.synced.set()

    def settled_on(self, base: dict[str, str]) -> bool:
        """Clusters and routes different from `base`, nothing outstanding."""
        return (not self.pending and self.version.get(CLUSTER_TYPE) != base.get(CLUSTER_TYPE)
                and self.version.get(ROUTE_TYPE) != base.get(ROUTE_TYPE))

    async def close(self) -> None:
        self.queue.put_nowait(None)
        self.call.cancel()
