"""The seam between the xDS server and whatever holds the resources (as go-control-plane's
ConfigWatcher): all the server asks of a cache, so sessions can be driven by a small fake
in tests and the cache can change (per-node secrets, identity checks) without the server.

The cache decides everything about *what* a node gets: which group it belongs to (and so
which snapshot, which secrets), and when a group is ready to be served at all. The server
decides *when* and *how* it is sent (versions, ACK/NACK, make-before-break).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Protocol

from envoy.config.core.v3 import base_pb2

from .snapshot import Resource

Selection = Mapping[str, Resource]  # name -> resource


class NodeRefused(LookupError):
    """This node is served nothing; the message says why, in words for its operator."""


class Group(Hashable, Protocol):
    """Nodes of equal groups are served identical resources."""

    @property
    def region(self) -> str: ...


class XdsCache(Protocol):
    def node_group(self, node: base_pb2.Node) -> Group:
        """The node's group; raises NodeRefused."""

    def not_ready(self, group: Group) -> str:
        """Why nothing may be sent to this group yet ("" when it may): e.g. its tokens. Like
        node_group and target, it changes only with a change notification (`watch`)."""

    def target(self, group: Group, type_url: str, names: frozenset[str] | None) -> tuple[Selection, str]:
        """What a node of `group` subscribed to `names` (None: wildcard) should hold, and the
        version of that selection. Equal arguments in one generation return the same object."""

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call notify() on the event loop after every change; returns the way to stop."""
