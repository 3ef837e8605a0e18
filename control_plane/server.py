"""The ADS server (state of the world) on grpc.aio.

One coroutine per Envoy stream. It answers requests (initial, ACK, NACK, subscription
change) and pushes when the cache moves to a new generation. Responses are assembled
from each resource's pre-serialized bytes, so a resource is serialized once however
many Envoys receive it.

Protocol points (xDS spec, "ACK/NACK and versioning"):
- a request whose nonce is not the latest sent for its type is stale and ignored;
- a NACK is recorded and logged; the same version is never sent again (no NACK loop),
  the next *different* version is;
- versions are content hashes, so an unchanged selection is never re-sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from .cache import SnapshotCache, UnknownRegion, node_group
from .metrics import Metrics
from .resources import CLUSTER_TYPE, LISTENER_TYPE, PUSH_ORDER
from .snapshot import type_version
from .status import ClientRegistry, ClientStream

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
WILDCARD_TYPES = (CLUSTER_TYPE, LISTENER_TYPE)
CONTROL_PLANE_ID = "vertex-gateway"


class AdsServer:
    def __init__(self, cache: SnapshotCache, clients: ClientRegistry, metrics: Metrics):
        self.cache = cache
        self.clients = clients
        self.metrics = metrics
        self._nonces = 0

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(ADS_SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self.stream_sotw,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=bytes,  # responses are assembled from pre-serialized resources
            ),
        })

    async def stream_sotw(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest],
                          context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await inbox.put(request)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(read())
        first = await inbox.get()
        if first is None:
            return
        stream = self.clients.open(first.node, context.peer(), "sotw")
        self.metrics.connected.labels("sotw").inc()
        log.info("xDS stream opened: node=%s peer=%s", stream.node_id, stream.peer)
        session = _SotwSession(self, stream)
        pending: set[asyncio.Future] = set()
        try:
            for response in session.on_request(first):
                yield response
            while True:
                next_request = asyncio.ensure_future(inbox.get())
                change = asyncio.ensure_future(self.cache.wait_for_change(self.cache.generation))
                pending = {next_request, change}
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for future in pending:
                    future.cancel()
                if change in done:
                    for response in session.on_change():
                        yield response
                if next_request in done:
                    request = next_request.result()
                    if request is None:
                        break
                    for response in session.on_request(request):
                        yield response
        finally:
            for future in pending:
                future.cancel()
            reader.cancel()
            self.clients.close(stream)
            self.metrics.connected.labels("sotw").dec()
            log.info("xDS stream closed: node=%s", stream.node_id)

    def next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)


class _SotwSession:
    """The per-stream protocol state machine; yields serialized DiscoveryResponses."""

    def __init__(self, server: AdsServer, stream: ClientStream):
        self.server = server
        self.stream = stream
        self.node = stream.node
        self.group = None
        self._resolve_group()

    def _resolve_group(self) -> None:
        try:
            self.group = node_group(self.node, self.server.cache.config)
            self.stream.region, self.stream.error = self.group.region, ""
        except (UnknownRegion, ValueError) as exc:
            if str(exc) != self.stream.error:
                log.error("serving nothing to node %s: %s", self.node.id, exc)
            self.group, self.stream.error = None, str(exc)

    def on_request(self, request: discovery_pb2.DiscoveryRequest):
        state = self.stream.type_state(request.type_url)
        metrics = self.server.metrics
        kind = request.type_url.rsplit(".", 1)[-1]
        if request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                return  # answers an older response; a newer one is in flight
            if request.HasField("error_detail"):
                state.nack_error = request.error_detail.message
                state.nacked_version = state.sent_version
                metrics.nacks.labels(kind).inc()
                log.warning("node %s NACKed %s version %s (keeps running %s): %s", self.stream.node_id, kind,
                            state.sent_version, request.version_info or "nothing", request.error_detail.message)
            else:
                if state.acked_version != request.version_info and state.sent_at is not None:
                    metrics.ack_latency.labels(kind).observe(time.time() - state.sent_at)
                    metrics.acks.labels(kind).inc()
                state.acked_version = request.version_info
                state.acked_at = time.time()
        names = frozenset(request.resource_names) - {"*"}
        wanted = None if request.type_url in WILDCARD_TYPES and not names else names
        initial = not state.subscribed
        state.subscribed = True
        if initial or wanted != state.names:
            state.names = wanted
            yield from self._push(request.type_url, force=initial)

    def on_change(self):
        self._resolve_group()
        for type_url in PUSH_ORDER:
            if self.stream.types.get(type_url) and self.stream.types[type_url].subscribed:
                yield from self._push(type_url)

    def _push(self, type_url: str, force: bool = False):
        if self.group is None:
            return
        missing = self.server.cache.missing_tokens()
        if missing:
            # Envoy must not serve traffic it cannot authenticate: nothing until the first tokens.
            self.stream.error = f"waiting for the first access token of auth profile(s) {', '.join(missing)}"
            return
        if self.stream.error.startswith("waiting for the first access token"):
            self.stream.error = ""
        state = self.stream.type_state(type_url)
        selection = self.server.cache.select(self.group, type_url, state.names)
        version = type_version(selection)
        if version == state.sent_version and not force:
            return
        nonce = self.server.next_nonce()
        header = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce,
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
        state.sent_version, state.sent_nonce, state.sent_at = version, nonce, time.time()
        state.sent_resources = {r.name: r.version for r in selection}
        self.server.metrics.pushes.labels(type_url.rsplit(".", 1)[-1], "sotw").inc()
        yield header.SerializeToString() + b"".join(r.response_entry for r in selection)
