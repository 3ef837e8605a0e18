"""What each connected Envoy was sent and what it ACKed or NACKed, per resource type.

The source for /debug/clients, CSDS and the push/ACK/NACK metrics; written only by the
xDS server, read by the admin endpoints.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from enum import Enum

from envoy.config.core.v3 import base_pb2

from .xds_types import push_rank, short


class SyncStatus(str, Enum):
    NOT_SENT = "NOT_SENT"
    SYNCED = "SYNCED"  # the last version sent was ACKed
    STALE = "STALE"  # sent, no answer yet
    NACKED = "NACKED"  # the last version sent was rejected; Envoy runs the one before


@dataclass
class TypeState:
    type_url: str
    subscribed: bool = False
    names: frozenset[str] | None = None  # None = wildcard
    sent_version: str = ""
    sent_nonce: str = ""
    answered_nonce: str = ""  # the last nonce an ACK or NACK referred to
    sent_at: float | None = None
    sent_resources: dict[str, str] = field(default_factory=dict)  # name -> resource version
    acked_version: str = ""
    acked_at: float | None = None
    nack_error: str = ""
    nacked_version: str = ""

    @property
    def status(self) -> SyncStatus:
        if not self.sent_version:  # (a reconnecting Delta client may be up to date with no response)
            return SyncStatus.NOT_SENT
        if self.nacked_version and self.nacked_version == self.sent_version:
            return SyncStatus.NACKED
        if self.acked_version == self.sent_version:
            return SyncStatus.SYNCED
        return SyncStatus.STALE

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "version_sent": self.sent_version,
            "version_acked": self.acked_version,
            "nonce": self.sent_nonce,
            "sent_at": _iso(self.sent_at),
            "acked_at": _iso(self.acked_at),
            "resources": len(self.sent_resources),
            "nack_error": self.nack_error or None,
            "nacked_version": self.nacked_version or None,
        }


@dataclass
class ClientStream:
    stream_id: int
    node_id: str
    peer: str
    mode: str  # "sotw" | "delta"
    node: base_pb2.Node = field(repr=False)
    region: str = ""
    connected_at: float = field(default_factory=time.time)
    error: str = ""  # why this node is served nothing (e.g. unknown region)
    types: dict[str, TypeState] = field(default_factory=dict)

    def type_state(self, type_url: str) -> TypeState:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(type_url)
        return state

    def to_dict(self) -> dict:
        types = sorted(self.types.values(), key=lambda s: push_rank(s.type_url))
        return {
            "node_id": self.node_id,
            "region": self.region,
            "peer": self.peer,
            "mode": self.mode,
            "connected_since": _iso(self.connected_at),
            "error": self.error or None,
            "types": {short(s.type_url): s.to_dict() for s in types},
        }


class ClientRegistry:
    def __init__(self) -> None:
        self._streams: dict[int, ClientStream] = {}
        self._ids = itertools.count(1)

    def open(self, node: base_pb2.Node, peer: str, mode: str) -> ClientStream:
        stream = ClientStream(next(self._ids), node.id, peer, mode, node)
        self._streams[stream.stream_id] = stream
        return stream

    def close(self, stream: ClientStream) -> None:
        self._streams.pop(stream.stream_id, None)

    def streams(self) -> list[ClientStream]:
        return sorted(self._streams.values(), key=lambda s: (s.node_id, s.stream_id))

    def by_node(self, node_id: str) -> list[ClientStream]:
        return [s for s in self.streams() if s.node_id == node_id]


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
