"""Immutable, consistent sets of serialized resources, versioned by content hash.

A resource is serialized once: its version is the hash of those bytes, and the bytes,
already framed as a DiscoveryResponse `resources` entry, are shared by every stream
that sends it. Two control-plane replicas given the same config produce the same
versions, so an Envoy moving between them is not re-sent anything.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.message import Message

from . import wire
from .wire import Serialized, as_message
from .xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, ROUTE_TYPE


class Resource:
    """One resource as served: immutable once interned (every snapshot and stream holding it
    shares it). A plain slotted class, not a frozen dataclass: 35,000 are made per cold build
    of 1,000 models x 5 regions, at a quarter of the cost."""

    __slots__ = ("name", "type_url", "version", "built", "requires", "response_entry", "version_line", "_message",
                 "_delta_frame")

    def __init__(self, name: str, type_url: str, version: str, built: Message | Serialized, response_entry: bytes):
        self.name = name
        self.type_url = type_url
        self.version = version  # content hash of the serialized message
        self.built = built
        self.requires = requires(built)  # (type URL, name) of what it refers to: checked per snapshot
        # This resource framed as one `resources` entry of a DiscoveryResponse (its Any after a
        # tag and length): made once, when interned (in the reload's thread), and joined as it is
        # into every SotW response that sends it.
        self.response_entry = response_entry
        # Its line in its selection's version (type_version): hashed per group, type and reload.
        self.version_line = f"{name}\0{version}\n".encode()
        self._message: Message | None = None
        self._delta_frame: tuple[bytes, bytes] | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return (self.name, self.type_url, self.version) == (other.name, other.type_url, other.version)

    def __hash__(self) -> int:
        return hash((self.name, self.type_url, self.version))

    def __repr__(self) -> str:
        return f"Resource(name={self.name!r}, type_url={self.type_url!r}, version={self.version!r})"

    @property
    def any_bytes(self) -> bytes:
        """The serialized google.protobuf.Any."""
        entry, start = self.response_entry, 1
        while entry[start] & 0x80:  # the length's varint
            start += 1
        return entry[start + 1:]

    @property
    def message(self) -> Message:
        """The resource as a message (a serialized one is parsed on first use: debug views)."""
        if self._message is None:
            self._message = as_message(self.built)
        return self._message

    @property
    def delta_parts(self) -> tuple[bytes, bytes, bytes]:
        """This resource framed as one `resources` entry of a DeltaDiscoveryResponse, in three
        parts to join: an envoy.service.discovery.v3.Resource {version = 1, resource = 2,
        name = 3} whose `resource` is response_entry as it is (the same tag and framing), so
        no copy of the resource is kept for Delta."""
        if self._delta_frame is None:
            name, version, entry = self.name.encode(), self.version.encode(), self.response_entry
            tail = b"\x1a" + wire.varint(len(name)) + name
            body_length = 1 + len(wire.varint(len(version))) + len(version) + len(entry) + len(tail)
            head = wire.RESOURCES_FIELD_TAG + wire.varint(body_length) + b"\x0a" + wire.varint(len(version)) + version
            self._delta_frame = head, tail
        head, tail = self._delta_frame
        return head, self.response_entry, tail

    @property
    def delta_entry(self) -> bytes:
        return b"".join(self.delta_parts)


def response_entry(type_url: str, data: bytes) -> bytes:
    """`data` as one `resources` entry: an Any {type_url = 1, value = 2} after a tag and length."""
    return wire.entry_head(type_url, len(data)) + data


def resource_name(message: Message | Serialized) -> str:
    if type(message) is Serialized:  # most resources: its name, without a failed attribute lookup
        return message.name
    return getattr(message, "cluster_name", "") or message.name


class Interner:
    """Serializes each resource object once; equal content yields the same version and the
    same bytes (one copy in memory).

    Entries unused by the latest generation are dropped by `retain`, so memory follows the
    config in force rather than every config ever loaded.
    """

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, str], Resource] = {}
        # Each built object is serialized once, however many node groups' builds share it and
        # however many reloads take it over (Build.inherit); the Resource holds the
        # object, so its id cannot be reused while the entry lives.
        self._by_id: dict[int, Resource] = {}

    def intern(self, type_url: str, message: Message | Serialized) -> Resource:
        found = self._by_id.get(id(message))
        if found is not None and found.built is message:
            return found
        data, name = wire.bytes_of(message), resource_name(message)
        version = hashlib.sha256(data).hexdigest()[:16]
        key = (type_url, name, version)
        found = self._by_key.get(key)
        if found is None:
            framed = message.entry if type(message) is Serialized else None
            found = Resource(name, type_url, version, message, framed or response_entry(type_url, data))
        elif found.built is not message:
            # The same content built again (a new config): the same bytes, now held through
            # this object, which later builds and reloads hand in again.
            found = Resource(name, type_url, version, message, found.response_entry)
        self._by_key[key] = self._by_id[id(message)] = found
        return found

    def retain(self, live: Iterable[Resource]) -> None:
        self.retain_ids(live_ids(live))

    def retain_ids(self, live: set[int]) -> None:
        """Keep only the entries whose Resource object's id is in `live` (live_ids(), worked
        out in the reload's thread: the event loop only filters)."""
        self._by_key = {k: r for k, r in self._by_key.items() if id(r) in live}
        self._by_id = {i: r for i, r in self._by_id.items() if id(r) in live}

    def __len__(self) -> int:
        return len(self._by_key)


def live_ids(*resources: Iterable[Resource]) -> set[int]:
    """The ids of these resources (one pass in C per mapping: 30,000 resources per reload)."""
    ids: set[int] = set()
    for each in resources:
        ids.update(map(id, each))
    return ids


class InconsistentSnapshot(ValueError):
    pass


@dataclass(frozen=True)
class Snapshot:
    # type URL -> name -> resource, in name order: a wildcard's selection as it is, never copied.
    resources: Mapping[str, Mapping[str, Resource]]
    # type URL -> type_version() of all its resources: worked out with the build (in the
    # reload's thread), not when the first Envoy is sent them.
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, built: Mapping[str, list[Message | Serialized]], interner: Interner) -> Snapshot:
        resources = {type_url: by_name(interner.intern(type_url, m) for m in built.get(type_url, []))
                     for type_url in PUSH_ORDER}
        snapshot = cls(resources, {type_url: type_version(of_type.values()) for type_url, of_type in resources.items()})
        snapshot.check_consistent()
        return snapshot

    def select(self, type_url: str, names: Iterable[str] | None = None) -> list[Resource]:
        """All resources of a type (names None: wildcard), or the named ones that exist."""
        return list(self.selection(type_url, names).values())

    def selection(self, type_url: str, names: Iterable[str] | None = None) -> Mapping[str, Resource]:
        """select() by name, in name order; all of the type (the usual case: every name
        subscribed) is the snapshot's own mapping, not a copy."""
        of_type = self.resources.get(type_url, _NONE)
        if names is None:
            return of_type
        if not isinstance(names, (set, frozenset)):
            names = set(names)
        if of_type.keys() <= names:
            return of_type
        return {name: of_type[name] for name in sorted(names) if name in of_type}

    def target(self, type_url: str, names: Iterable[str] | None = None) -> tuple[Mapping[str, Resource], str]:
        """selection() and its type_version()."""
        selection = self.selection(type_url, names)
        if selection is self.resources.get(type_url):
            return selection, self.versions[type_url]
        return selection, type_version(selection.values())

    def all(self) -> Iterable[Resource]:
        for of_type in self.resources.values():
            yield from of_type.values()

    def check_consistent(self) -> None:
        """Every name a resource refers to is in the snapshot: Envoy would wait on it forever."""
        missing = [f"{_KIND[resource.type_url]} {resource.name} needs {_KIND[type_url]} {name}"
                   for resource in self.all() if resource.requires for type_url, name in resource.requires
                   if name not in self.resources.get(type_url, _NONE)]
        if missing:
            raise InconsistentSnapshot("; ".join(missing))


_KIND = {CLUSTER_TYPE: "cluster", ENDPOINT_TYPE: "endpoints", LISTENER_TYPE: "listener", ROUTE_TYPE: "route config"}


def requires(built: Message | Serialized) -> tuple[tuple[str, str], ...]:
    """(type URL, name) of what a resource refers to: a serialized one says so itself."""
    if isinstance(built, Serialized):
        return built.requires
    if isinstance(built, cluster_pb2.Cluster) and built.type == cluster_pb2.Cluster.EDS:
        return ((ENDPOINT_TYPE, built.eds_cluster_config.service_name or built.name),)
    if isinstance(built, listener_pb2.Listener):
        return tuple((ROUTE_TYPE, name) for name in _rds_names(built))
    return ()


def by_name(resources: Iterable[Resource]) -> dict[str, Resource]:
    """Resources by name, in name order (the order selections keep: responses are joined in it)."""
    return {r.name: r for r in sorted(resources, key=_NAME)}


_NAME = operator.attrgetter("name")
_NONE: Mapping[str, Resource] = MappingProxyType({})
_VERSION_LINE = operator.attrgetter("version_line")


def type_version(resources: Iterable[Resource]) -> str:
    """The version of a selection (given in name order): a hash over (name, version), so equal
    content => equal version. Each resource's line is made once; they are hashed at once."""
    return hashlib.sha256(b"".join(map(_VERSION_LINE, resources))).hexdigest()[:16]


def _rds_names(listener: listener_pb2.Listener) -> list[str]:
    names = []
    for chain in listener.filter_chains:
        for flt in chain.filters:
            if flt.typed_config.Is(hcm_pb2.HttpConnectionManager.DESCRIPTOR):
                manager = hcm_pb2.HttpConnectionManager()
                flt.typed_config.Unpack(manager)
                if manager.HasField("rds"):
                    names.append(manager.rds.route_config_name)
    return names
