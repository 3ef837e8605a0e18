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
from envoy.service.discovery.v3 import discovery_pb2

from .metrics import Metrics
from .sessions import DeltaSession, Session, SotwSession
from .status import ClientRegistry
from .xds_cache import XdsCache

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
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
        session = session_type(self.cache, stream, self.metrics, self.next_nonce)

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
