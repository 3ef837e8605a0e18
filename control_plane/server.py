"""The ADS server on grpc.aio: state of the world (StreamAggregatedResources) and Delta
(DeltaAggregatedResources). The transport only: one coroutine per Envoy stream feeds its
session (sessions.py, the protocol) with the Envoy's requests and the cache's changes, and
writes what the session answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from .heap import HeapTrimmer
from .metrics import Metrics
from .responses import Responses
from .sessions import DeltaSession, Session, SotwSession
from .status import REPEATS_LOGGED_EVERY_S, ClientRegistry, Sparse, printable
from .xds_cache import XdsCache
from .xds_identity import Gate

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
CACHE_CHANGED = object()  # an inbox item: the cache moved to a new generation


REQUESTS_QUEUED = 16  # per stream; beyond this the stream is not read (gRPC flow control holds the Envoy)


class Outgoing:
    """A response on its way out. grpc.aio keeps the last message a stream handler yielded
    until the next one (for an idle Envoy: for ever), so a stream yields this holder and the
    serializer (`take`) empties it: what stays behind per stream is an empty holder, not the
    stream's last response (tens of KB; half of a connected client's memory at 1,000)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


def take(message: Outgoing) -> bytes:
    data, message.data = message.data, b""
    return data


def stream_handler(handler, request_type) -> grpc.RpcMethodHandler:
    """A stream-stream ADS method whose handler yields Outgoing (pre-serialized bytes)."""
    return grpc.stream_stream_rpc_method_handler(handler, request_deserializer=request_type.FromString,
                                                 response_serializer=take)


class AdsServer:
    """max_streams: at most this many xDS streams on this replica (None: no cap); one more is
    refused with RESOURCE_EXHAUSTED, so the Envoy's retry lands on another replica."""

    def __init__(self, cache: XdsCache, clients: ClientRegistry, metrics: Metrics, max_streams: int | None = None):
        self.cache = cache
        self.clients = clients
        self.metrics = metrics
        self.max_streams = max_streams
        # Responses built once for all streams; what they hold is only ever old, never wrong,
        # after a change: dropped then, so memory follows what is sent now.
        self.responses = Responses()
        cache.watch(self.responses.clear)
        self.heap = HeapTrimmer()
        self.heap.when_quiet(self.responses.release_finished)  # each push's joined responses
        self.open_streams = 0
        self._nonces = 0
        self._full = Sparse(REPEATS_LOGGED_EVERY_S)  # --max-streams refusals: one line per interval
        self._gate = Gate("xDS stream")

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        # Responses are bytes assembled from pre-serialized resources, handed over in Outgoing.
        return grpc.method_handlers_generic_handler(ADS_SERVICE, {
            "StreamAggregatedResources": stream_handler(functools.partial(self._serve, session_type=SotwSession),
                                                        discovery_pb2.DiscoveryRequest),
            "DeltaAggregatedResources": stream_handler(functools.partial(self._serve, session_type=DeltaSession),
                                                       discovery_pb2.DeltaDiscoveryRequest),
        })

    def next_nonce(self) -> str:
        self._nonces += 1
        return str(self._nonces)

    async def _refuse(self, context: grpc.aio.ServicerContext) -> None:
        self.metrics.refused.inc()
        left_out = self._full.due()
        if left_out is not None:
            log.warning("refused %d xDS stream(s): this replica serves its maximum of %d (--max-streams); "
                        "latest from %s", left_out + 1, self.max_streams, context.peer())
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this control-plane replica serves its maximum of {self.max_streams} xDS streams; "
                            "retry (another replica)")

    async def _serve(self, requests: AsyncIterator, context: grpc.aio.ServicerContext,
                     session_type: type[Session]) -> AsyncIterator[Outgoing]:
        """One Envoy's stream. One bounded inbox for both kinds of event: the Envoy's requests
        (a reader that waits when it is full, so a flooding client is held back by gRPC flow
        control, not buffered), and "the cache changed": a flag, not a queue of changes, since
        a change only means "reconcile" and a stream needs to learn it once however many
        happened meanwhile."""
        if self.max_streams is not None and self.open_streams >= self.max_streams:
            await self._refuse(context)
            return
        self.open_streams += 1
        inbox: asyncio.Queue = asyncio.Queue(maxsize=REQUESTS_QUEUED)
        closed = asyncio.Event()
        changed = False

        async def read() -> None:
            try:
                async for request in requests:
                    await inbox.put(request)
                    request = None  # (not kept alive while waiting for the next)
            finally:
                closed.set()
                if not inbox.full():  # wake the loop; if full, it finds `closed` once it has drained
                    inbox.put_nowait(None)

        def on_change() -> None:
            nonlocal changed
            if not changed:
                changed = True
                if inbox.empty():  # else the loop is about to look at `changed` anyway
                    inbox.put_nowait(CACHE_CHANGED)

        reader = asyncio.create_task(read())
        try:
            item = await _next(inbox, closed)
            if item is None:
                return
            session = await self._open(item, context, session_type)
            stream = session.stream
            stop_watching = self.cache.watch(on_change)
            try:
                while item is not None:
                    if item is not CACHE_CHANGED:
                        for response in session.on_request(item):
                            yield Outgoing(response)
                    if changed:
                        changed = False
                        for response in session.on_change():
                            yield Outgoing(response)
                    response = item = None  # don't keep the last response or request alive while waiting
                    self.heap.busy()
                    item = await _next(inbox, closed)
            finally:
                stop_watching()
                self.clients.close(stream)
                self.metrics.connected.labels(stream.mode).dec()
                log.debug("xDS stream closed: node=%s mode=%s", printable(stream.node_id, 256), stream.mode)
        finally:
            reader.cancel()
            self.open_streams -= 1

    async def _open(self, first, context: grpc.aio.ServicerContext, session_type: type[Session]) -> Session:
        """The session of a stream whose first request is `first`; refuses (aborts) a node whose
        mTLS certificate was issued for another node or region."""
        await self._gate.admit(first.node, context)
        # A copy: the request's node would keep the whole first request alive. Without
        # `extensions` (Envoy lists every extension it was built with: KBs per stream).
        node = base_pb2.Node()
        node.CopyFrom(first.node)
        node.ClearField("extensions")
        stream = self.clients.open(node, context.peer(), session_type.MODE)
        self.metrics.connected.labels(stream.mode).inc()
        # DEBUG: a replica failure sends thousands of Envoys to the others at once; who is
        # connected is in /debug/clients and vertex_gateway_xds_connected_clients.
        log.debug("xDS stream opened: node=%s mode=%s peer=%s", printable(stream.node_id, 256), stream.mode, stream.peer)
        return session_type(self.cache, stream, self.metrics, self.next_nonce, self.responses)


async def _next(inbox: asyncio.Queue, closed: asyncio.Event):
    """The next inbox item; None once the Envoy closed its side and everything queued is read."""
    if inbox.empty() and closed.is_set():
        return None
    return await inbox.get()
