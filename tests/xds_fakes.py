"""A small fake of the xDS server's cache (control_plane.xds_cache.XdsCache) and a driver that
feeds one session request by request, as the server's stream loop would: for the protocol
tests (tests/test_sessions.py, tests/test_responses.py), with no config, no OAuth server and
no whole control plane."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2

from control_plane.metrics import Metrics
from control_plane.server import AdsServer
from control_plane.sessions import DeltaSession, SotwSession
from control_plane.snapshot import Interner, type_version
from control_plane.status import ClientRegistry
from control_plane.xds_cache import NodeRefused
from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE


@dataclass(frozen=True)
class Group:
    region: str


class FakeCache:
    """Clusters (EDS) and their endpoints by name, one listener and one route config whose
    content says which clusters the routes name. Implements XdsCache."""

    def __init__(self, clusters=("a", "b"), route_tag: str = "1"):
        self.interner = Interner()
        self.generation = 0
        self.waiting = ""
        self._watchers: set[Callable[[], None]] = set()
        self.set(clusters, route_tag)

    def set(self, clusters, route_tag: str = "1", cluster_tag: str = "") -> None:
        msgs = {
            CLUSTER_TYPE: [cluster_pb2.Cluster(name=c, type=cluster_pb2.Cluster.EDS, alt_stat_name=cluster_tag)
                           for c in clusters],
            ENDPOINT_TYPE: [endpoint_pb2.ClusterLoadAssignment(cluster_name=c) for c in clusters],
            LISTENER_TYPE: [listener_pb2.Listener(name="ingress")],
            ROUTE_TYPE: [route_pb2.RouteConfiguration(name="vertex", virtual_hosts=[
                route_components_pb2.VirtualHost(name=f"{route_tag}:{','.join(clusters)}", domains=["*"])])],
        }
        self.resources = {t: {r.name: r for r in (self.interner.intern(t, m) for m in ms)} for t, ms in msgs.items()}
        self._memo: dict = {}
        self.generation += 1
        for notify in list(self._watchers):
            notify()

    def node_group(self, node: base_pb2.Node) -> Group:
        region = node.metadata.fields["region"].string_value
        if region not in ("r1", "r2"):
            raise NodeRefused(f"node {node.id!r} is in region {region!r}, unknown here")
        return Group(region)

    def not_ready(self, group: Group) -> str:
        return self.waiting

    def target(self, group, type_url, names):
        key = (group, type_url, names)
        if key not in self._memo:
            of_type = self.resources.get(type_url, {})
            chosen = {n: r for n, r in sorted(of_type.items()) if names is None or n in names}
            self._memo[key] = (chosen, type_version(list(chosen.values())))
        return self._memo[key]

    def watch(self, notify):
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)


def node(region: str = "r1") -> base_pb2.Node:
    return base_pb2.Node(id="envoy-1", metadata=struct_pb2.Struct(fields={"region": struct_pb2.Value(string_value=region)}))


class Driver:
    """One session driven request by request, as the server's stream loop would."""

    def __init__(self, cache: FakeCache, delta: bool = False, region: str = "r1", server: AdsServer | None = None):
        self.server = server or AdsServer(cache, ClientRegistry(), Metrics())
        kind = DeltaSession if delta else SotwSession
        self.stream = self.server.clients.open(node(region), "test", kind.MODE)
        self.session = kind(cache, self.stream, self.server.metrics, self.server.next_nonce, self.server.responses)
        self.response_type = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse

    def request(self, type_url: str, names=(), version: str = "", nonce: str = "", error: str = "", **delta):
        if self.response_type is discovery_pb2.DiscoveryResponse:
            req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names), version_info=version,
                                                 response_nonce=nonce)
        else:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce,
                                                      resource_names_subscribe=list(names), **delta)
        if error:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        return [self.response_type.FromString(b) for b in self.session.on_request(req)]

    def ack(self, response, names=()):
        return self.request(response.type_url, names, version=getattr(response, "version_info", ""),
                            nonce=response.nonce)

    def changed(self):
        return [self.response_type.FromString(b) for b in self.session.on_change()]

    def status(self, type_url: str) -> str:
        return self.stream.types[type_url].status.value


def cluster_names(response) -> list[str]:
    out = []
    for entry in response.resources:
        any_msg = entry.resource if hasattr(entry, "resource") else entry
        msg = cluster_pb2.Cluster()
        any_msg.Unpack(msg)
        out.append(msg.name)
    return sorted(out)


def sync(d: Driver) -> None:
    [cds] = d.request(CLUSTER_TYPE)
    assert d.ack(cds) == []
    [eds] = d.request(ENDPOINT_TYPE, cluster_names(cds))
    d.ack(eds, cluster_names(cds))
    [lds] = d.request(LISTENER_TYPE)
    d.ack(lds)
    [rds] = d.request(ROUTE_TYPE, ["vertex"])
    d.ack(rds, ["vertex"])
    assert all(d.status(t) == "SYNCED" for t in (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE))
