"""Simulated Envoys for bench/controlplane.py (ii) and bench/cp_memory.py: the request order
and ACKs of a real Envoy on one ADS stream, state of the world (SimEnvoy) or Delta
(DeltaSimEnvoy), cheap enough to run 1,000 in one process. Both are the tests' scripted
client (control_plane/lab/ads_client.py) with Envoy's walk through the types on top."""

from __future__ import annotations

import asyncio
import time

from control_plane.lab.ads_client import AdsClient
from control_plane.xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE

TOKEN_SECRET = "token/default"
_BY_BYTES = ("clusters by bytes",)
_BY_BYTES_MAX = 100_000


class _Walker(AdsClient):
    """What both variants share: counters, the sync event, the read loop."""

    def __init__(self, channel, node_id: str, region: str, parsed: dict, sds: bool, delta: bool):
        super().__init__(channel, region=region, node_id=node_id, delta=delta)
        self.parsed = parsed  # shared by every client of the process (see the subclasses)
        self.sds = sds
        self.version: dict[str, str] = {}  # type -> version of the last response ACKed
        self.pending: set[str] = set()  # types asked for and not yet answered
        self.responses = 0
        self.acks = 0
        self.last_ack_at = 0.0
        self.synced = asyncio.Event()
        self.error = ""

    async def run(self) -> None:
        try:
            self.subscribe(CLUSTER_TYPE)
            self.pending.add(CLUSTER_TYPE)
            async for response in self.call:
                self.on_response(response)
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001  (grpc.aio raises AioRpcError on a cancelled/closed stream)
            self.error = repr(exc)[:300]

    def subscribe(self, type_url: str, names=()) -> None:
        raise NotImplementedError

    def on_response(self, response) -> None:
        raise NotImplementedError

    def _acked(self, type_url: str, version: str) -> None:
        self.version[type_url] = version
        self.acks += 1
        self.last_ack_at = time.monotonic()

    def settled_on(self, base: dict[str, str]) -> bool:
        """ACKed clusters and routes different from `base`, nothing outstanding."""
        return (not self.pending and self.version.get(CLUSTER_TYPE) != base.get(CLUSTER_TYPE)
                and self.version.get(ROUTE_TYPE) != base.get(ROUTE_TYPE))


class SimEnvoy(_Walker):
    """One simulated Envoy on an ADS SotW stream: the request order and ACKs of a real one."""

    def __init__(self, channel, node_id: str, region: str, parsed: dict, sds: bool):
        # parsed: CDS version -> (EDS cluster names, per-cluster digests); and under
        # _BY_BYTES: a cluster's bytes -> (its name, its EDS service name or None)
        super().__init__(channel, node_id, region, parsed, sds, delta=False)
        self.nonce: dict[str, str] = {}  # type -> last nonce answered
        self.eds_names: list[str] = []
        self.cluster_digests: dict[str, bytes] = {}

    def subscribe(self, type_url: str, names=()) -> None:
        self.send(type_url, names, self.version.get(type_url, ""), self.nonce.get(type_url, ""))

    def _clusters(self, response) -> tuple[list[str], dict[str, bytes]]:
        found = self.parsed.get(response.version_info)
        if found is None:
            # Each cluster is parsed once per process, as the Delta clients do (by name and
            # version): the clients of one process would otherwise parse, one after the other,
            # what real Envoys parse at once on their own CPUs (5 x 4,000 clusters at 1,000
            # models x 5 regions: 0.2 s of an edit, most of it clusters every region shares).
            from envoy.config.cluster.v3 import cluster_pb2
            by_bytes = self.parsed.setdefault(_BY_BYTES, {})
            if len(by_bytes) > _BY_BYTES_MAX:
                by_bytes.clear()
            names, digests = [], {}
            for res in response.resources:
                if res.type_url != CLUSTER_TYPE:
                    raise ValueError(f"a {res.type_url} in a cluster response")
                value = res.value
                info = by_bytes.get(value)
                if info is None:
                    cluster = cluster_pb2.Cluster.FromString(value)
                    info = by_bytes[value] = (cluster.name, cluster.eds_cluster_config.service_name or cluster.name
                                              if cluster.type == cluster_pb2.Cluster.EDS else None)
                digests[info[0]] = value
                if info[1] is not None:
                    names.append(info[1])
            found = self.parsed[response.version_info] = (sorted(names), digests)
        return found

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
        self.ack(response, names)
        self.nonce[t] = response.nonce
        self._acked(t, response.version_info)
        for type_url, follow_names in follow:
            self.subscribe(type_url, follow_names)
            self.pending.add(type_url)
        if ROUTE_TYPE in self.version and not self.pending:
            self.synced.set()


class DeltaSimEnvoy(_Walker):
    """One simulated Envoy on an ADS Delta stream: subscribes as Envoy does (clusters and
    listeners by wildcard, endpoints, the token secret and routes by name), ACKs every
    response with its nonce, follows cluster additions and removals with endpoint
    (un)subscriptions. An updated EDS cluster's endpoints are the server's to re-send."""

    def __init__(self, channel, node_id: str, region: str, parsed: dict, sds: bool):
        # parsed: (cluster name, resource version) -> EDS service name or ""
        super().__init__(channel, node_id, region, parsed, sds, delta=True)
        self.clusters: dict[str, str] = {}  # cluster name -> EDS service name ("" if not EDS)
        self.eds_names: set[str] = set()

    def subscribe(self, type_url: str, names=(), drop=()) -> None:
        self.send_delta(type_url, names, drop)

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
        self.ack(response)
        self._acked(t, response.system_version_info)
        for type_url, add, drop in follow:
            self.subscribe(type_url, add, drop)
            if add or type_url == LISTENER_TYPE:  # (an unsubscription alone is not answered)
                self.pending.add(type_url)
        if ROUTE_TYPE in self.version and not self.pending:
            self.synced.set()
