"""The snapshot cache: the config in force and one snapshot per node group.

Apart from the server (as in go-control-plane): it implements xds_cache.XdsCache, the
only thing the server knows of it; the cache knows nothing about streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from .config import RegionConfig
from .resources import Build, NodeGroup, build_serialized, credential_secret, credential_secret_name, members
from .snapshot import Interner, Resource, Snapshot, live_ids, type_version
from .wire import Serialized
from .xds_cache import NodeRefused
from .xds_types import CLUSTER_TYPE, SECRET_TYPE

log = logging.getLogger(__name__)

Builder = Callable[[Build, NodeGroup], Mapping[str, list[Message | Serialized]]]
T = TypeVar("T")


class UnknownRegion(NodeRefused):
    pass


def node_group(node: base_pb2.Node, config: RegionConfig) -> NodeGroup:
    """Which snapshot a node gets: its region and its client listener (bootstrap metadata)."""
    fields = node.metadata.fields
    region = fields["region"].string_value if "region" in fields else node.locality.region
    if not region:
        raise UnknownRegion(f"node {node.id!r} has no region (bootstrap metadata 'region')")
    if region not in config.regions:
        raise UnknownRegion(f"node {node.id!r} is in region {region!r}, which the config does not define "
                            f"(defined: {', '.join(config.vertex_regions)})")
    if config.regions[region].custom:
        raise UnknownRegion(f"node {node.id!r} is in region {region!r}, which is a custom backend: "
                            f"Envoys run in Vertex regions ({', '.join(config.vertex_regions)})")
    address, port = config.listener.address, config.listener.port
    listen = fields["listen"].string_value if "listen" in fields else ""
    if listen:
        host, _, port_text = listen.rpartition(":")
        address, port = host.strip("[]") or address, int(port_text)
    return NodeGroup(region=region, listen_address=address, listen_port=port)


class SnapshotCache:
    def __init__(self, config: RegionConfig, builder: Builder = build_serialized,
                 regions: Iterable[str] | None = None):
        """Builds the snapshot of every Vertex region's Envoys now (or of `regions` only:
        `validate` shares them out between processes, control_plane/build_check.py)."""
        self._builder = builder
        self._interner = Interner()
        self._config = config
        self._watchers: set[Callable[[], None]] = set()
        self._secrets: dict[str, Resource] = {}
        self.generation = 0
        self._memo: dict = {}
        self._memo_generation = -1
        self._avoided: frozenset[str] = frozenset()  # fleet avoidance (control_plane/fleet.py)
        # Called with what a reload replaced (the config, and the snapshots before with the builds
        # they came from): the server hands it to its HeapTrimmer, so that freeing it does not
        # delay the push. Default: freed now.
        self.retire: Callable[[object], None] = _drop
        self._snapshots = _Built()
        # A broken config fails here, before anything is served.
        self._snapshots = self._prebuild(config, regions=regions)

    @property
    def config(self) -> RegionConfig:
        return self._config

    @property
    def build(self) -> Build:
        """The build served (fleet avoidance applied): what is built from the config in force."""
        assert self._snapshots.build is not None
        return self._snapshots.build

    @property
    def reused_models(self) -> int:
        """Models the last build took over from the one before (Build.inherit)."""
        return self._snapshots.reused_models

    def set_tokens(self, tokens: Mapping[str, str]) -> None:
        """The current access token per auth profile (and header value per custom backend,
        keyed backend/{name}), served as SDS secrets. Only a change of some value makes a new
        generation (and so a push)."""
        secrets = {credential_secret_name(p): self._interner.intern(SECRET_TYPE, credential_secret(p, t))
                   for p, t in tokens.items() if t}  # never an empty secret: Envoy would 401 everything
        if {n: r.version for n, r in secrets.items()} == {n: r.version for n, r in self._secrets.items()}:
            return
        self._secrets = secrets
        self._bump()

    def node_group(self, node: base_pb2.Node) -> NodeGroup:
        try:
            return node_group(node, self._config)
        except ValueError as exc:  # e.g. a malformed 'listen' in the bootstrap metadata
            raise NodeRefused(str(exc)) from None

    def not_ready(self, group: NodeGroup) -> str:
        missing = self.missing_tokens(group)
        return f"waiting for the first access token of auth profile(s) {', '.join(missing)}" if missing else ""

    def missing_tokens(self, group: NodeGroup | None = None) -> list[str]:
        """Profiles the config (or one node group's Envoys) needs whose first token has not
        arrived: such an Envoy is served nothing until then."""
        def compute() -> list[str]:
            config = self._config
            needed = [*config.profiles_in_use(), *(f"backend/{b}" for b in config.backends_in_use())] \
                if group is None else self.credentials_needed(group)
            return [p for p in needed if credential_secret_name(p) not in self._secrets]
        return self._per_generation(("missing_tokens", group), compute)

    def credentials_needed(self, group: NodeGroup) -> list[str]:
        """The credentials an Envoy of this group injects (auth profiles' access tokens, custom
        backends' own): those of the regions its routes can reach. It is served those secrets
        and no others."""
        return _credentials_needed(self._snapshots.base, group.region)

    def target(self, group: NodeGroup, type_url: str, names: frozenset[str] | None) -> tuple[Mapping[str, Resource], str]:
        """What a node of `group` subscribed to `names` should hold, and its version. Shared by
        every stream of the group until the next generation (1,000 Envoys, 5 groups: 5 hashes)."""
        def compute() -> tuple[Mapping[str, Resource], str]:
            if type_url != SECRET_TYPE:
                return self.snapshot(group).target(type_url, names)
            selection = {r.name: r for r in self.select(group, type_url, names)}
            return selection, type_version(selection.values())
        return self._per_generation((group, type_url, names), compute)

    def _per_generation(self, key: tuple, compute: Callable[[], T]) -> T:
        if self._memo_generation != self.generation:
            self._memo, self._memo_generation = {}, self.generation
        try:
            return self._memo[key]
        except KeyError:
            value = self._memo[key] = compute()
            return value

    def select(self, group: NodeGroup, type_url: str, names: Iterable[str] | None = None) -> list[Resource]:
        if type_url == SECRET_TYPE:
            # Only its own region's tokens: a node that names another region's secret gets nothing.
            allowed = {credential_secret_name(p) for p in self.credentials_needed(group)}
            secrets = {n: r for n, r in self._secrets.items() if n in allowed}
            wanted = sorted(secrets) if names is None else sorted(n for n in set(names) if n in secrets)
            return [secrets[n] for n in wanted]
        return self.snapshot(group).select(type_url, names)

    def snapshot(self, group: NodeGroup) -> Snapshot:
        found = self._snapshots.get(group)
        if found is None:
            found = self._snapshots[group] = Snapshot.build(self._builder(self.build, group), self._interner)
        return found

    def region_clusters(self) -> dict[str, list[Resource]]:
        """The clusters of each Vertex region this cache built, as its Envoys get them."""
        config = self._config
        return {g.region: list(s.resources.get(CLUSTER_TYPE, {}).values()) for g, s in self._snapshots.items()
                if (g.listen_address, g.listen_port) == (config.listener.address, config.listener.port)}

    def set_config(self, config: RegionConfig) -> None:
        """Build every known group's snapshot for the new config, then swap; on error keep the old."""
        self.apply(config, self.prepare(config))

    def prepare(self, config: RegionConfig) -> _Built:
        """The heavy part of a reload (building and serializing); safe to run off the event loop."""
        built = self._prebuild(config, set(self._snapshots))
        built.live = _live(built)
        return built

    def apply(self, config: RegionConfig, snapshots: _Built) -> None:
        if snapshots.build.avoided != self._avoided:
            # Prepared (off the loop) before the fleet's avoidance changed: build again with it.
            self.retire(snapshots)  # freed off the push, as what the reload replaces is
            snapshots = self._prebuild(config, set(snapshots))
        self.retire((self._config, self._snapshots))
        self._config, self._snapshots = config, snapshots
        self._interner.retain_ids((snapshots.live or _live(snapshots)) | live_ids(self._secrets.values()))
        self._bump()

    @property
    def avoided(self) -> frozenset[str]:
        return self._avoided

    def set_avoided(self, regions: frozenset[str]) -> None:
        """Regions every Envoy should try last (fleet avoidance): rebuild and push. A reload
        keeps them (prepare() builds with them)."""
        if regions == self._avoided:
            return
        previous = self._avoided
        self._avoided = frozenset(regions)
        try:
            self.set_config(self._config)
        except Exception:
            self._avoided = previous
            raise

    def _bump(self) -> None:
        self.generation += 1
        for notify in list(self._watchers):
            notify()

    def watch(self, notify: Callable[[], None]) -> Callable[[], None]:
        """Call notify() (on the event loop) after every change; returns the way to stop."""
        self._watchers.add(notify)
        return lambda: self._watchers.discard(notify)

    def _prebuild(self, config: RegionConfig, groups: set[NodeGroup] | None = None,
                  regions: Iterable[str] | None = None) -> _Built:
        # Each region's default group is built too, so a config that cannot be built for some
        # region is refused even when no Envoy of that region is connected yet.
        wanted = set(groups or ()) | {NodeGroup(r, config.listener.address, config.listener.port)
                                      for r in (config.vertex_regions if regions is None else regions)}
        now = self._snapshots
        # The config in force again (fleet avoidance changed): its build, which keeps the builds
        # for other avoided regions (going back to an order built before costs nothing).
        base = now.base if now.base is not None and now.base.config is config else Build(config)
        build = base.avoiding(self._avoided)
        before = now.build
        reused = build.inherit(before) if before is not None and before is not build else 0
        try:
            built = _Built({g: Snapshot.build(self._builder(build, g), self._interner)
                            for g in wanted if g.region in config.vertex_regions})
        finally:
            build.built()
        for region in {g.region for g in built}:  # here, off the event loop, rather than at the first push
            _credentials_needed(base, region)
        built.base, built.build, built.reused_models = base, build, reused
        return built


def _live(snapshots: Mapping[NodeGroup, Snapshot]) -> set[int]:
    return live_ids(*(of_type.values() for s in snapshots.values() for of_type in s.resources.values()))


def _drop(garbage: object) -> None:
    pass


def _credentials_needed(base: Build | None, region: str) -> list[str]:
    """A function of the config alone: once per config's build without avoidance (avoidance
    reorders, never adds), from each model's, which a reload that leaves the model as it was
    takes over."""
    assert base is not None
    config = base.config

    def credential_by_region(model: str) -> dict[str, str | None]:
        # Once per model; most models carry one credential everywhere.
        return base.memo_model(model, ("credential by region",), lambda: {
            r: config.credential_for(model, r) for r in config.models[model].served_regions})

    def of_model(model: str) -> frozenset[str | None]:
        by_region = credential_by_region(model)
        used = members(base, model, region)
        if len(set(by_region.values())) == 1:
            return frozenset(by_region.values()) if used else frozenset()
        return frozenset(by_region[r] for r in used)

    def compute() -> list[str]:
        # Most configs use one credential everywhere: the models after the first one served
        # here cannot add to it (5,000 model-region pairs at 1,000 x 5: 45 ms per reload).
        anywhere = frozenset().union(*(credential_by_region(m).values() for m in config.models)) - {None}
        needed: set[str | None] = set()
        for model in config.models:
            if needed >= anywhere:
                break
            needed |= of_model(model)
        return sorted(needed - {None})
    return base.memo(("credentials_needed", region), compute)


class _Built(dict):
    """Snapshots by node group, the build they came from (fleet avoidance applied) and the
    config's build without avoidance (which keeps it), and how many models' resources were
    taken over from the build before."""

    base: Build | None = None
    build: Build | None = None
    reused_models: int = 0
    live: set[int] | None = None  # ids of every resource of these snapshots (Interner.retain_ids)
