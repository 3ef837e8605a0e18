"""One stream's subscription to one resource type: the single record of what was asked for,
what was sent, and what the Envoy ACKed or NACKed.

SotW and Delta sessions write it (through the transitions below, so related fields never
disagree); /debug/clients, CSDS and the metrics read it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from .xds_cache import Selection

NOTHING: Selection = MappingProxyType({})
_NAME_SETS: dict[frozenset[str], frozenset[str]] = {}
_NAME_SETS_MAX = 4096


def shared_names(names) -> frozenset[str]:
    """One frozenset per distinct set of subscribed names, shared by every stream that asks for
    it (1,000 Envoys of a region name the same 50 endpoints: one set, not 1,000), and hashed
    once for the cache's lookups. Bounded: cleared when full."""
    key = frozenset(names)
    found = _NAME_SETS.get(key)
    if found is None:
        if len(_NAME_SETS) >= _NAME_SETS_MAX:
            _NAME_SETS.clear()
        found = _NAME_SETS[key] = key
    return found


class SyncStatus(str, Enum):
    NOT_SENT = "NOT_SENT"
    SYNCED = "SYNCED"  # the last version sent was ACKed
    STALE = "STALE"  # sent, no answer yet
    NACKED = "NACKED"  # the last version sent was rejected; Envoy runs the one before


class Answer(str, Enum):
    NEW = "new"  # no nonce: a first request (or a subscription change)
    ANSWER = "answer"  # the ACK or NACK of the latest response
    STALE = "stale"  # refers to an older response: ignore
    AGAIN = "again"  # a second request on a nonce already answered: Envoy wants it re-sent


@dataclass(slots=True, eq=False)
class Subscription:
    type_url: str
    subscribed: bool = False
    names: frozenset[str] | None = None  # None = wildcard
    # The latest response. `sent` is every resource the Envoy holds once it applies it (a
    # selection shared with the cache and other streams, never copied or mutated).
    sent: Selection = field(default_factory=lambda: NOTHING)
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    answered_nonce: str = ""  # the last nonce an ACK or NACK referred to
    # What the Envoy runs: the last ACKed response.
    acked: Selection = field(default_factory=lambda: NOTHING)
    acked_version: str = ""
    acked_at: float | None = None
    nack_error: str = ""
    nacked_version: str = ""
    # Delta only: name -> version the client holds once it applies the latest response (a
    # name dropped from here is sent again), and what it held before that response (restored
    # by a NACK: the client applied nothing of it). Replaced, never mutated, on each send.
    client: dict[str, str] | None = None
    client_before: dict[str, str] | None = None
    # The version `client` is known to hold all of, nothing else in scope: sending it again
    # would be empty. Cleared whenever `client` changes other than by a send.
    client_version: str = ""

    # ------------------------------------------------------------------ transitions

    def answer(self, nonce: str, version: str, error: str | None) -> Answer:
        """Apply an ACK (error None) or a NACK of the response with this nonce."""
        if not nonce:
            return Answer.NEW
        if nonce != self.sent_nonce:
            return Answer.STALE
        if nonce == self.answered_nonce:
            return Answer.AGAIN
        self.answered_nonce = nonce
        if error is not None:
            self.nack_error, self.nacked_version = error, self.sent_version
            if self.client_before is not None:
                # Envoy may have applied part of it (a CDS update creates the good clusters and
                # rejects the bad one): what the response sent is held at an unknown version, so
                # the next push sends it again, or removes it.
                before = self.client_before
                unsure = {name: "" for name, version in (self.client or {}).items() if before.get(name) != version}
                self.client, self.client_version = {**before, **unsure} if unsure else before, ""
        else:
            self.acked, self.acked_version, self.acked_at = self.sent, version, time.time()
        self.client_before = None
        return Answer.ANSWER

    def mark_sent(self, selection: Selection, version: str, nonce: str) -> None:
        self.sent, self.sent_version, self.sent_nonce, self.sent_at = selection, version, nonce, time.time()

    def assume_held(self, selection: Selection, version: str) -> None:
        """The client already holds exactly this (a Delta reconnect): sent and ACKed, silently."""
        self.sent = self.acked = selection
        self.sent_version = self.acked_version = version

    # ------------------------------------------------------------------ reading

    @property
    def status(self) -> SyncStatus:
        if not self.sent_version:  # (a reconnecting Delta client may be up to date with no response)
            return SyncStatus.NOT_SENT
        if self.nacked_version and self.nacked_version == self.sent_version:
            return SyncStatus.NACKED
        if self.acked_version == self.sent_version:
            return SyncStatus.SYNCED
        return SyncStatus.STALE

    @property
    def acked_latest(self) -> bool:
        return bool(self.sent_version) and self.acked_version == self.sent_version

    def to_dict(self) -> dict:
        return {
            "status": self.status.value,
            "version_sent": self.sent_version,
            "version_acked": self.acked_version,
            "nonce": self.sent_nonce,
            "sent_at": iso(self.sent_at),
            "acked_at": iso(self.acked_at),
            "resources": len(self.sent),
            "nack_error": self.nack_error or None,
            "nacked_version": self.nacked_version or None,
        }


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"
