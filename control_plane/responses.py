"""Responses built once and shared by every stream that sends the same thing.

1,000 Envoys of one region are sent the same clusters at the same version: their responses
differ only by the nonce. So a response is worked out here once, as its parts but the nonce
(the header and each resource's pre-serialized entry), and each stream joins them with its
own nonce field (protobuf fields may come in any order on the wire): one copy of a response
of several MB per stream, and none to hold it meanwhile.

Delta also needs, per stream, what the client holds (name -> version) to work out what
changed. Streams that were sent the same responses hold the same `Held` map (one object, never
mutated), so the next version's difference against it (`DeltaPlan`) is worked out once for all
of them, not once per stream and resource.

Keys are the content-hash versions and held maps kept alive by the entry itself, so an entry
is never wrong, only old: `clear()` (on every cache change) keeps memory to what streams send
now.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.internal.encoder import _VarintBytes

from .xds_cache import Selection

CONTROL_PLANE_ID = "vertex-gateway"
_ENTRY = operator.attrgetter("response_entry")
_VERSION = operator.attrgetter("version")
_NAME = operator.attrgetter("name")
_NONCE_TAG = b"\x2a"  # field 5 (nonce), length-delimited: in DiscoveryResponse and DeltaDiscoveryResponse


class Held(dict):
    """A client's name -> version map shared by streams: never mutated (a change makes a new one)."""

    __slots__ = ()


NOTHING_HELD = Held()


@dataclass(frozen=True, slots=True)
class DeltaPlan:
    """What a Delta response sends a client holding `before`: its `parts` but the nonce
    (none when there is nothing to send), the names it removes, the updated names (held before at another
    version), and what the client holds once it applies it."""

    before: Mapping[str, str]  # (keeps the memo key's object alive)
    parts: list[bytes]
    removed: tuple[str, ...]
    updated: frozenset[str]
    after: Mapping[str, str]


def with_nonce(parts: Sequence[bytes], nonce: str) -> bytes:
    """The response of these parts with this nonce, in one copy."""
    data = nonce.encode()
    return b"".join([*parts, _NONCE_TAG + _VarintBytes(len(data)) + data])


class Responses:
    def __init__(self) -> None:
        self._sotw: dict[tuple, list[bytes]] = {}
        self._delta: dict[tuple, DeltaPlan] = {}
        self._exact: dict[tuple, Held] = {}
        self._forgotten: dict[tuple, tuple[Held, Held]] = {}
        self._finished: dict[int, tuple[Sequence[bytes], str, bytes]] = {}

    def clear(self) -> None:
        self._sotw, self._delta, self._exact, self._forgotten = {}, {}, {}, {}
        self._finished = {}

    def finished(self, parts: Sequence[bytes], last_nonce: str, next_nonce: Callable[[], str]) -> tuple[str, bytes]:
        """The response of these parts (sotw() or a DeltaPlan's, shared by the streams that are
        sent the same) with a nonce, and its nonce. Every stream sent the same parts gets the same
        nonce and the same bytes, joined once: the Envoys of one node group at one version (100 of
        them at 1,000 models x 5 regions: a 14 MB join each was a third of an edit's CPU). A nonce
        only tells apart the responses of one stream, so it need not differ between streams; a
        stream whose last response had this nonce (asked again) gets a new one."""
        found = self._finished.get(id(parts))
        if found is None or found[0] is not parts or found[1] == last_nonce:
            nonce = next_nonce()
            found = self._finished[id(parts)] = (parts, nonce, with_nonce(parts, nonce))
        return found[1], found[2]

    def release_finished(self) -> None:
        """Drop the joined responses (once xDS work is quiet: every stream has been sent them)."""
        self._finished = {}

    def sotw(self, type_url: str, version: str, desired: Selection) -> list[bytes]:
        """The parts of the DiscoveryResponse sending `desired` (of this version, in name
        order) but its nonce (with_nonce)."""
        key = (type_url, version)
        found = self._sotw.get(key)
        if found is None:
            header = discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=type_url,
                control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
            found = self._sotw[key] = [header.SerializeToString(), *map(_ENTRY, desired.values())]
        return found

    def delta(self, type_url: str, before: Mapping[str, str], desired: Selection, version: str,
              names: frozenset[str] | None) -> DeltaPlan:
        """What to send a Delta client holding `before` that should hold `desired` (of this
        version) of the names in scope (`names`; None: all)."""
        shared = type(before) is Held
        key = (type_url, id(before), version, names)
        if shared:
            found = self._delta.get(key)
            if found is not None:
                return found
        exact = self._exact_map(type_url, version, desired)
        # (Set operations, not a loop per resource: thousands per edit, all of them at a first sync.)
        if before is exact:
            changed, gone = [], frozenset()
        elif not before:
            changed, gone = list(desired.values()), frozenset()
        else:
            changed = [desired[n] for n, _ in sorted(exact.items() - before.items())]
            gone = before.keys() - exact.keys()
        removed = tuple(sorted(gone if names is None else gone & names))
        if len(removed) == len(gone):
            after = exact  # the usual case: the client holds exactly the target, as others do
        elif changed or removed:
            after = dict(before)
            after.update((r.name, r.version) for r in changed)
            for name in removed:
                del after[name]
            if shared:
                after = Held(after)
        else:
            after = before
        parts: list[bytes] = []
        if changed or removed:
            header = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=version, type_url=type_url, removed_resources=removed,
                control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
            parts.append(header.SerializeToString())
            for resource in changed:
                parts += resource.delta_parts
        updated = frozenset(before.keys() & set(map(_NAME, changed))) if before and changed else frozenset()
        plan = DeltaPlan(before, parts, removed, updated, after)
        if shared:
            self._delta[key] = plan
        return plan

    def forget(self, held: Mapping[str, str], names: frozenset[str]) -> Mapping[str, str]:
        """`held` without `names` (so they are sent again); shared in, shared out."""
        if held.keys().isdisjoint(names):
            return held
        key = (id(held), names)
        found = self._forgotten.get(key)
        if found is not None:
            return found[1]
        rest = {n: v for n, v in held.items() if n not in names}
        if type(held) is not Held:
            return rest
        rest = Held(rest)
        self._forgotten[key] = (held, rest)
        return rest

    def _exact_map(self, type_url: str, version: str, desired: Selection) -> Held:
        key = (type_url, version)
        found = self._exact.get(key)
        if found is None:
            found = self._exact[key] = Held(zip(desired, map(_VERSION, desired.values())))
        return found
