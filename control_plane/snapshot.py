"""Immutable, consistent sets of serialized resources, versioned by content hash.

A resource is serialized once: its version is the hash of those bytes, and the bytes,
already framed as a DiscoveryResponse `resources` entry, are shared by every stream
that sends it. Two control-plane replicas given the same config produce the same
versions, so an Envoy moving between them is not re-sent anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf.internal.encoder import _VarintBytes
from google.protobuf.message import Message

from . import wire
from .wire import Serialized, as_message
from .xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, ROUTE_TYPE

_RESOURCES_FIELD_TAG = b"\x12"  # DiscoveryResponse.resources: field 2, length-delimited


@dataclass(frozen=True)
class Resource:
    name: str
    type_url: str
    version: str  # content hash of the serialized message
    built: Message | Serialized = field(repr=False, compare=False)
    any_bytes: bytes = field(repr=False, compare=False)  # serialized google.protobuf.Any

    @cached_property
    def message(self) -> Message:
        """The resource as a message (a serialized one is parsed on first use: debug views)."""
        return as_message(self.built)

    @cached_property
    def response_entry(self) -> bytes:
        """This resource framed as one `resources` entry of a DiscoveryResponse."""
        return _RESOURCES_FIELD_TAG + _VarintBytes(len(self.any_bytes)) + self.any_bytes

    @cached_property
    def delta_entry(self) -> bytes:
        """This resource framed as one `resources` entry of a DeltaDiscoveryResponse: an
        envoy.service.discovery.v3.Resource {version = 1, resource = 2, name = 3}."""
        name, version = self.name.encode(), self.version.encode()
        body = (b"\x0a" + _VarintBytes(len(version)) + version
                + b"\x12" + _VarintBytes(len(self.any_bytes)) + self.any_bytes
                + b"\x1a" + _VarintBytes(len(name)) + name)
        return _RESOURCES_FIELD_TAG + _VarintBytes(len(body)) + body


def resource_name(message: Message | Serialized) -> str:
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
        # however many reloads take it over (RegionConfig.inherit); the Resource holds the
        # object, so its id cannot be reused while the entry lives.
        self._by_id: dict[int, Resource] = {}

    def intern(self, type_url: str, message: Message | Serialized) -> Resource:
        found = self._by_id.get(id(message))
        if found is not None and found.built is message:
            return found
        data = message.data if isinstance(message, Serialized) else message.SerializeToString(deterministic=True)
        version = hashlib.sha256(data).hexdigest()[:16]
        name = resource_name(message)
        key = (type_url, name, version)
        found = self._by_key.get(key)
        if found is None:
            found = Resource(name, type_url, version, message, wire.packed(type_url, data))
        elif found.built is not message:
            # The same content built again (a new config): the same bytes, now held through
            # this object, which later builds and reloads hand in again.
            found = Resource(name, type_url, version, message, found.any_bytes)
        self._by_key[key] = self._by_id[id(message)] = found
        return found

    def retain(self, live: Iterable[Resource]) -> None:
        keep = {(r.type_url, r.name, r.version) for r in live}
        self._by_key = {k: v for k, v in self._by_key.items() if k in keep}
        self._by_id = {id(r.built): r for r in self._by_key.values()}

    def __len__(self) -> int:
        return len(self._by_key)


class InconsistentSnapshot(ValueError):
    pass


@dataclass(frozen=True)
class Snapshot:
    resources: Mapping[str, Mapping[str, Resource]]  # type URL -> name -> resource

    @classmethod
    def build(cls, built: Mapping[str, list[Message | Serialized]], interner: Interner) -> Snapshot:
        snapshot = cls({type_url: {r.name: r for r in (interner.intern(type_url, m) for m in built.get(type_url, []))}
                        for type_url in PUSH_ORDER})
        snapshot.check_consistent()
        return snapshot

    def select(self, type_url: str, names: Iterable[str] | None = None) -> list[Resource]:
        """All resources of a type (names None: wildcard), or the named ones that exist."""
        of_type = self.resources.get(type_url, {})
        if names is None:
            return [of_type[name] for name in sorted(of_type)]
        return [of_type[name] for name in sorted(set(names)) if name in of_type]

    def all(self) -> Iterable[Resource]:
        for of_type in self.resources.values():
            yield from of_type.values()

    def check_consistent(self) -> None:
        """Every name a resource refers to is in the snapshot: Envoy would wait on it forever."""
        missing = [f"{_KIND[resource.type_url]} {resource.name} needs {_KIND[type_url]} {name}"
                   for resource in self.all() for type_url, name in _requires(resource)
                   if name not in self.resources.get(type_url, {})]
        if missing:
            raise InconsistentSnapshot("; ".join(missing))


_KIND = {CLUSTER_TYPE: "cluster", ENDPOINT_TYPE: "endpoints", LISTENER_TYPE: "listener", ROUTE_TYPE: "route config"}


def _requires(resource: Resource) -> tuple[tuple[str, str], ...]:
    """(type URL, name) of what the resource refers to: a serialized one says so itself."""
    built = resource.built
    if isinstance(built, Serialized):
        return built.requires
    if isinstance(built, cluster_pb2.Cluster) and built.type == cluster_pb2.Cluster.EDS:
        return ((ENDPOINT_TYPE, built.eds_cluster_config.service_name or built.name),)
    if isinstance(built, listener_pb2.Listener):
        return tuple((ROUTE_TYPE, name) for name in _rds_names(built))
    return ()


def type_version(resources: list[Resource]) -> str:
    """The version of a selection: a hash over (name, version), so equal content => equal version."""
    digest = hashlib.sha256()
    for resource in resources:
        digest.update(f"{resource.name}\0{resource.version}\n".encode())
    return digest.hexdigest()[:16]


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
