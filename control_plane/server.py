"""The ADS server on grpc.aio: state of the world (StreamAggregatedResources) and Delta
(DeltaAggregatedResources).

One coroutine per Envoy stream. After every request (initial, ACK, NACK, subscription
change) and every cache generation, the stream's session *reconciles*: per type it works
out what the Envoy should hold now and sends the difference. Responses are assembled from
each resource's pre-serialized bytes, so a resource is serialized once however many
Envoys receive it.

Make-before-break, so an edit never drops traffic:
- clusters are first sent as the union of the new set and what the Envoy has, so nothing
  a live route names disappears;
- listeners and routes wait until those clusters and their endpoints are ACKed;
- clusters no longer wanted are removed only once the new routes are ACKed.

Protocol points (xDS spec, "ACK/NACK and versioning"):
- a request whose nonce is not the latest sent for its type is stale and ignored;
- a NACK is recorded and logged, and the version it rejected is never sent again (no
  NACK loop); the next *different* version is;
- versions are content hashes: an unchanged selection is never re-sent, and a Delta
  client that reconnects is sent nothing it already has.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from .metrics import Metrics
from .snapshot import type_version
from .status import ClientRegistry, ClientStream, TypeState
from .xds_cache import NodeRefused, Selection, XdsCache
from .xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, ROUTE_TYPE, WILDCARD_TYPES, short

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CONTROL_PLANE_ID = "vertex-gateway"
CACHE_CHANGED = object()  # an inbox item: the cache moved to a new generation


class AdsServer:
    def __init__(self, cache: XdsCache, clients: ClientRegistry, metrics: Metrics):
        self.cache = cache
        self.clients = clients
        self.metrics = metrics
        self._nonces = 0

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        # Responses are bytes assembled from pre-serialized resources, hence `bytes` as serializer.
        return grpc.method_handlers_generic_handler(ADS_SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                functools.partial(self._serve, session_type=SotwSession),
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString, response_serializer=bytes),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                functools.partial(self._serve, session_type=DeltaSession),
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString, response_serializer=bytes),
        })

    def next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)

    async def _serve(self, requests: AsyncIterator, context: grpc.aio.ServicerContext,
                     session_type: type[Session]) -> AsyncIterator[bytes]:
        inbox: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await inbox.put(request)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(read())
        first = await inbox.get()
        if first is None:
            reader.cancel()
            return
        stream = self.clients.open(first.node, context.peer(), session_type.MODE)
        self.metrics.connected.labels(stream.mode).inc()
        log.info("xDS stream opened: node=%s mode=%s peer=%s", stream.node_id, stream.mode, stream.peer)
        session = session_type(self, stream)

        # One inbox for both kinds of event: Envoy's requests, and a cache change (at most one
        # queued: a change only says "reconcile", so several collapse into one).
        change_queued = False

        def on_change() -> None:
            nonlocal change_queued
            if not change_queued:
                change_queued = True
                inbox.put_nowait(CACHE_CHANGED)

        stop_watching = self.cache.watch(on_change)
        try:
            item = first
            while item is not None:
                if item is CACHE_CHANGED:
                    change_queued = False
                    responses = session.on_change()
                else:
                    responses = session.on_request(item)
                for response in responses:
                    yield response
                response = responses = None  # don't keep the last response alive while waiting
                item = await inbox.get()
        finally:
            stop_watching()
            reader.cancel()
            self.clients.close(stream)
            self.metrics.connected.labels(stream.mode).dec()
            log.info("xDS stream closed: node=%s mode=%s", stream.node_id, stream.mode)


class Session:
    """Per-stream protocol state, shared by both variants: what to hold, and when."""

    MODE = ""

    def __init__(self, server: AdsServer, stream: ClientStream):
        self.server = server
        self.cache = server.cache
        self.stream = stream
        self.group = None
        self.sent: dict[str, Selection] = {}  # type -> what the Envoy was last sent (all of it)
        self.held: dict[str, Selection] = {}  # type -> what the Envoy runs: the last ACKed selection

    # -------------------------------------------------------------- events

    def on_change(self) -> Iterator[bytes]:
        yield from self.reconcile()

    def reconcile(self, resend: str | None = None) -> Iterator[bytes]:
        """Send each subscribed type what differs from `desired`; `resend`: a type the client
        asked for again and must be answered even if nothing changed."""
        self._resolve_group()
        if self.group is None:
            return
        not_ready = self.cache.not_ready(self.group)
        if not_ready:
            # e.g. Envoy must not serve traffic it cannot authenticate: nothing until the first tokens.
            self.stream.error = not_ready
            return
        for type_url in PUSH_ORDER:
            state = self.stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            desired = self.desired(type_url, state)
            if desired is not None:
                yield from self.send(type_url, state, desired, force=type_url == resend)

    # -------------------------------------------------------------- make-before-break

    def desired(self, type_url: str, state: TypeState) -> Selection | None:
        """What the Envoy should hold of this type now; None: hold what it has."""
        target = self._target(type_url, state.names)
        if type_url == CLUSTER_TYPE:
            held = self.held.get(CLUSTER_TYPE, {})
            if held.keys() <= target.keys() or self._routes_settled():
                return target  # nothing to keep, or routes no longer name the old clusters
            return {**held, **target}
        if type_url == ENDPOINT_TYPE:
            # Endpoints follow the Envoy's subscription, which keeps naming clusters still held.
            held = {n: r for n, r in self.held.get(ENDPOINT_TYPE, {}).items()
                    if n not in target and (state.names is None or n in state.names)}
            return {**held, **target} if held else target
        if type_url in (LISTENER_TYPE, ROUTE_TYPE) and not self._clusters_ready():
            return None
        return target

    def _target(self, type_url: str, names) -> Selection:
        return self.cache.target(self.group, type_url, names)[0]

    def version_of(self, type_url: str, state: TypeState, desired: Selection) -> str:
        target, version = self.cache.target(self.group, type_url, state.names)
        return version if desired is target else type_version([desired[n] for n in sorted(desired)])

    def _clusters_ready(self) -> bool:
        """Every cluster (and its endpoints) the new routes may name has been ACKed."""
        clusters = self._target(CLUSTER_TYPE, None)
        cds = self.stream.types.get(CLUSTER_TYPE)
        if cds is None or not clusters.keys() <= cds.sent_resources.keys() or not _acked(cds):
            return False
        eds = self.stream.types.get(ENDPOINT_TYPE)
        wanted = self._target(ENDPOINT_TYPE, None).keys()
        if not wanted:
            return True
        return eds is not None and wanted <= eds.sent_resources.keys() and _acked(eds)

    def _routes_settled(self) -> bool:
        for type_url in (LISTENER_TYPE, ROUTE_TYPE):
            state = self.stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            if self.cache.target(self.group, type_url, state.names)[1] != state.acked_version or not _acked(state):
                return False
        return True

    # -------------------------------------------------------------- helpers

    def _resolve_group(self) -> None:
        try:
            self.group = self.cache.node_group(self.stream.node)
            self.stream.region, self.stream.error = self.group.region, ""
        except NodeRefused as exc:
            if str(exc) != self.stream.error:
                log.error("serving nothing to node %s: %s", self.stream.node_id, exc)
            self.group, self.stream.error = None, str(exc)

    def record_answer(self, state: TypeState, nonce: str, version: str, error: str | None) -> str:
        """Apply an ACK or NACK to `state`. Returns "new" (no nonce: a first request), "answer",
        "stale" (answers an older response: ignore), or "again": a second request on a nonce
        already answered, which Envoy sends when it wants the resources re-sent (an updated
        EDS cluster warms only on a fresh EDS response)."""
        if not nonce:
            return "new"
        if nonce != state.sent_nonce:
            return "stale"
        if nonce == state.answered_nonce:
            return "again"
        state.answered_nonce = nonce
        kind = short(state.type_url)
        metrics = self.server.metrics
        if error is not None:
            state.nack_error, state.nacked_version = error, state.sent_version
            metrics.nacks.labels(kind).inc()
            log.warning("node %s NACKed %s version %s (it keeps running %s): %s", self.stream.node_id, kind,
                        state.sent_version, version or "its previous config", error)
        else:
            if state.acked_version != version and state.sent_at is not None:
                metrics.ack_latency.labels(kind).observe(time.time() - state.sent_at)
                metrics.acks.labels(kind).inc()
            state.acked_version, state.acked_at = version, time.time()
            self.held[state.type_url] = self.sent.get(state.type_url, {})
        return "answer"

    def mark_sent(self, type_url: str, state: TypeState, selection: Selection, version: str) -> str:
        nonce = self.server.next_nonce()
        state.sent_version, state.sent_nonce, state.sent_at = version, nonce, time.time()
        state.sent_resources = {n: r.version for n, r in selection.items()}
        self.sent[type_url] = selection
        self.server.metrics.pushes.labels(short(type_url), self.MODE).inc()
        return nonce

    def on_request(self, request) -> Iterator[bytes]:
        raise NotImplementedError

    def send(self, type_url: str, state: TypeState, desired: Selection, force: bool = False) -> Iterator[bytes]:
        raise NotImplementedError


class SotwSession(Session):
    MODE = "sotw"

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> Iterator[bytes]:
        state = self.stream.type_state(request.type_url)
        error = request.error_detail.message if request.HasField("error_detail") else None
        answer = self.record_answer(state, request.response_nonce, request.version_info, error)
        if answer == "stale":
            return
        names = frozenset(request.resource_names) - {"*"}
        state.names = None if request.type_url in WILDCARD_TYPES and not names else names
        state.subscribed = True
        yield from self.reconcile(resend=request.type_url if answer == "again" else None)

    def send(self, type_url: str, state: TypeState, desired: Selection, force: bool = False) -> Iterator[bytes]:
        version = self.version_of(type_url, state, desired)
        if version == state.sent_version and state.sent_nonce and not force:
            return
        selection = [desired[n] for n in sorted(desired)]
        nonce = self.mark_sent(type_url, state, desired, version)
        header = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce,
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
        yield header.SerializeToString() + b"".join(r.response_entry for r in selection)


class DeltaSession(Session):
    MODE = "delta"

    def __init__(self, server: AdsServer, stream: ClientStream):
        super().__init__(server, stream)
        self.known: dict[str, dict[str, str]] = {}  # type -> name -> version the client holds
        self._before: dict[str, dict[str, str]] = {}  # type -> `known` before the unanswered response

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Iterator[bytes]:
        type_url = request.type_url
        state = self.stream.type_state(type_url)
        error = request.error_detail.message if request.HasField("error_detail") else None
        # A Delta ACK carries no version: the client now holds what we sent.
        version = "" if error is not None else state.sent_version
        if self.record_answer(state, request.response_nonce, version, error) == "stale":
            return
        if request.response_nonce and error is not None:
            self.known[type_url] = self._before.get(type_url, {})  # the client applied nothing
        if not state.subscribed:
            state.subscribed = True
            self.known[type_url] = dict(request.initial_resource_versions)
            subscribe = set(request.resource_names_subscribe)
            state.names = None if type_url in WILDCARD_TYPES and (not subscribe or "*" in subscribe) \
                else frozenset(subscribe - {"*"})
        elif request.resource_names_subscribe or request.resource_names_unsubscribe:
            if state.names is not None:
                state.names = (state.names | set(request.resource_names_subscribe)) \
                    - set(request.resource_names_unsubscribe)
            for name in request.resource_names_subscribe:  # asked for again (e.g. an updated
                self.known.get(type_url, {}).pop(name, None)  # cluster re-subscribes its endpoints)
            for name in request.resource_names_unsubscribe:  # the client drops it; forget it
                self.known.get(type_url, {}).pop(name, None)
        yield from self.reconcile()

    def send(self, type_url: str, state: TypeState, desired: Selection, force: bool = False) -> Iterator[bytes]:
        version = self.version_of(type_url, state, desired)
        if state.nacked_version == version:
            return  # Envoy rejected exactly this: wait for a different version
        known = self.known.setdefault(type_url, {})
        changed = [desired[n] for n in sorted(desired) if known.get(n) != desired[n].version]
        in_scope: Callable[[str], bool] = (lambda n: True) if state.names is None else (lambda n: n in state.names)
        removed = sorted(n for n in known if n not in desired and in_scope(n))
        if not changed and not removed:
            if state.sent_version != version:  # the client already holds exactly this (a reconnect)
                state.sent_version = state.acked_version = version
                state.sent_resources = {n: r.version for n, r in desired.items()}
                self.sent[type_url] = self.held[type_url] = desired
            return
        if type_url == CLUSTER_TYPE:
            # An updated EDS cluster warms only when its endpoints arrive again, and a Delta client
            # does not re-subscribe names it already has: send those endpoints again after this.
            endpoints = self.known.get(ENDPOINT_TYPE, {})
            for resource in changed:
                if resource.name in known:
                    endpoints.pop(resource.name, None)
        self._before[type_url] = dict(known)
        nonce = self.mark_sent(type_url, state, desired, version)
        for resource in changed:
            known[resource.name] = resource.version
        for name in removed:
            known.pop(name, None)
        header = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed,
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
        yield header.SerializeToString() + b"".join(r.delta_entry for r in changed)


def _acked(state: TypeState) -> bool:
    return bool(state.sent_version) and state.acked_version == state.sent_version
