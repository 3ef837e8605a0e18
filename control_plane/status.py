"""What each connected Envoy was sent and what it ACKed or NACKed, per resource type.

The source for /debug/clients, CSDS and the push/ACK/NACK metrics; written only by the
xDS server, read by the admin endpoints.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2

from .subscription import Subscription, SyncStatus, iso
from .xds_types import push_rank, short

__all__ = ["ClientRegistry", "ClientStream", "Subscription", "SyncStatus"]


@dataclass(slots=True, eq=False)
class ClientStream:
    stream_id: int
    node_id: str
    peer: str
    mode: str  # "sotw" | "delta"
    node: base_pb2.Node = field(repr=False)
    region: str = ""
    connected_at: float = field(default_factory=time.time)
    error: str = ""  # why this node is served nothing (e.g. unknown region)
    types: dict[str, Subscription] = field(default_factory=dict)  # type URL -> its one record

    def subscription(self, type_url: str) -> Subscription:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = Subscription(type_url)
        return state

    @property
    def status(self) -> str:
        """The stream's worst state: ERROR (served nothing), NACKED, STALE (incl. not sent), SYNCED."""
        if self.error:
            return "ERROR"
        states = {t.status for t in self.types.values() if t.subscribed}
        if SyncStatus.NACKED in states:
            return "NACKED"
        if not states or states != {SyncStatus.SYNCED}:
            return "STALE"
        return "SYNCED"

    def to_dict(self) -> dict:
        types = sorted(self.types.values(), key=lambda s: push_rank(s.type_url))
        return {
            "node_id": self.node_id,
            "region": self.region,
            "peer": self.peer,
            "mode": self.mode,
            "connected_since": iso(self.connected_at),
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



NACK_TEXT_LIMIT = 4096  # characters of an Envoy's NACK error kept, logged and shown


REPEATS_LOGGED_EVERY_S = 10.0  # a refusal repeated by a retrying Envoy: one log line per this


class Sparse:
    """A repeated event logged once per `every` seconds per key, saying how many were left out:
    an Envoy retrying a refused stream every second, or a stampede of them, writes a line, not
    thousands. At most `max_keys` keys are remembered (a flood of new ones forgets the old)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 1024):
        self.every, self._clock, self._max_keys = every, clock, max_keys
        self._seen: dict[object, list] = {}  # key -> [logged at, left out since]

    def due(self, key: object = None) -> int | None:
        """None: leave this one out. Else log it: how many were left out since the last line."""
        now = self._clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.every:
            entry[1] += 1
            return None
        if entry is None and len(self._seen) >= self._max_keys:
            self._seen.clear()
        self._seen[key] = [now, 0]
        return entry[1] if entry is not None else 0


def printable(text: str, limit: int = NACK_TEXT_LIMIT) -> str:
    """Untrusted text (a NACK's error, a node id) made safe for one log line or a debug view:
    at most `limit` characters, backslashes and control characters escaped, so it can neither
    forge a log line nor make a 100 KB one. The limit holds for the escaped text (an escape is
    up to 10 characters long)."""
    pieces, size = [], 0
    for shown, ch in enumerate(text):
        piece = "\\\\" if ch == "\\" else ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        if size + len(piece) > limit:
            return "".join(pieces) + f"... [{len(text) - shown} more characters]"
        pieces.append(piece)
        size += len(piece)
    return "".join(pieces)
