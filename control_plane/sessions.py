"""The xDS protocol of one stream, state of the world (SotW) and Delta: per type, what the
Envoy should hold now, and when to send it.

After every request (initial, ACK, NACK, subscription change) and every cache change, a
session *reconciles*: per subscribed type it works out what the Envoy should hold and sends
the difference. Responses are assembled from each resource's pre-serialized bytes, so a
resource is serialized once however many Envoys receive it. Everything known about a type
on a stream is in its one Subscription record (subscription.py).

Make-before-break, so an edit never drops traffic:
- clusters are first sent as the union of the new set and what the Envoy has, so nothing
  a live route names disappears;
- listeners and routes wait until every cluster they may name, and its endpoints, are
  ACKed (a cluster only updated was ACKed before: it keeps serving while it warms, so
  routes go out with it, not one round trip later; after a NACK they wait for a version
  the Envoy accepts);
- clusters no longer wanted are removed only once the new routes are ACKed.

Protocol points (xDS spec, "ACK/NACK and versioning"):
- a request whose nonce is not the latest sent for its type is stale and ignored;
- a NACK is recorded and logged, and the version it rejected is never sent again (no
  NACK loop); the next *different* version is;
- versions are content hashes: an unchanged selection is never re-sent, and a Delta
  client that reconnects is sent nothing it already has.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator

from envoy.service.discovery.v3 import discovery_pb2

from .metrics import Metrics
from .responses import NOTHING_HELD, Held, Responses, with_nonce
from .snapshot import type_version
from .status import ClientStream, printable
from .subscription import Answer, Subscription, SyncStatus, shared_names
from .xds_cache import NodeRefused, Selection, XdsCache
from .xds_types import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    PUSH_ORDER,
    ROUTE_TYPE,
    SECRET_TYPE,
    WILDCARD_TYPES,
    short,
)

log = logging.getLogger(__name__)

# A request for one type can change what is due for these types, and only these (in push
# order): its own answer, and the make-before-break gates it opens. Clusters and endpoints
# ACKed release listeners and routes; listeners and routes ACKed release the removal of old
# clusters (and so the endpoints a Delta client must be sent again). A cache change
# reconciles every type.
AFFECTED = {
    SECRET_TYPE: (SECRET_TYPE,),
    CLUSTER_TYPE: (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE),
    ENDPOINT_TYPE: (ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE),
    LISTENER_TYPE: (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE),
    ROUTE_TYPE: (CLUSTER_TYPE, ENDPOINT_TYPE, ROUTE_TYPE),
}


class Session:
    """Per-stream protocol logic shared by both variants: what to hold, and when."""

    MODE = ""

    __slots__ = ("cache", "stream", "metrics", "next_nonce", "responses", "group", "_group_current", "_not_ready",
                 "_targets", "_ready")

    def __init__(self, cache: XdsCache, stream: ClientStream, metrics: Metrics, next_nonce: Callable[[], str],
                 responses: Responses | None = None):
        self.cache = cache
        self.stream = stream
        self.metrics = metrics
        self.next_nonce = next_nonce
        self.responses = responses if responses is not None else Responses()  # shared by the server's streams
        self.group = None
        # The group, whether it may be served, and the targets asked of the cache are looked up
        # again after each cache change, and meanwhile kept here: a request costs dict lookups.
        self._group_current = False
        self._not_ready = ""
        self._targets: dict[tuple, tuple[Selection, str]] = {}
        self._ready: bool | None = None  # _clusters_ready(), worked out once per reconcile

    # -------------------------------------------------------------- events

    def on_change(self) -> Iterator[bytes]:
        self._group_current = False
        yield from self.reconcile()

    def reconcile(self, resend: str | None = None, types: tuple[str, ...] = PUSH_ORDER) -> Iterator[bytes]:
        """Send each subscribed type of `types` what differs from `desired`; `resend`: a type
        the client asked for again and must be answered even if nothing changed."""
        if not self._group_current:
            self._resolve_group()
            self._group_current = True
        if self.group is None:
            return
        if self._not_ready:
            # e.g. Envoy must not serve traffic it cannot authenticate: nothing until the first tokens.
            self.stream.error = self._not_ready
            return
        self._ready = None
        for type_url in types:
            state = self.stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            desired = self.desired(type_url, state)
            if desired is not None:
                for response in self.send(type_url, state, *desired, force=type_url == resend):
                    self._ready = None  # a send (and the wait while it goes out) can change it
                    yield response

    # -------------------------------------------------------------- make-before-break

    def desired(self, type_url: str, state: Subscription) -> tuple[Selection, str] | None:
        """What the Envoy should hold of this type now, and its version; None: hold what it has."""
        found = self._lookup(type_url, state.names)
        target = found[0]
        if type_url == CLUSTER_TYPE:
            held = state.acked
            if held is target or held.keys() <= target.keys() or self._routes_settled():
                return found  # nothing to keep, or routes no longer name the old clusters
            return _versioned({**held, **target})
        if type_url == ENDPOINT_TYPE:
            if state.acked is target or state.acked.keys() <= target.keys():
                return found
            # Endpoints follow the Envoy's subscription, which keeps naming clusters still held.
            held = {n: r for n, r in state.acked.items()
                    if n not in target and (state.names is None or n in state.names)}
            return _versioned({**held, **target}) if held else found
        if type_url in (LISTENER_TYPE, ROUTE_TYPE):
            if self._ready is None:
                self._ready = self._clusters_ready()
            if not self._ready:
                return None
        return found

    def _lookup(self, type_url: str, names: frozenset[str] | None) -> tuple[Selection, str]:
        key = (type_url, names)
        found = self._targets.get(key)
        if found is None:
            found = self._targets[key] = self.cache.target(self.group, type_url, names)
        return found

    def _target(self, type_url: str, names) -> Selection:
        return self._lookup(type_url, names)[0]

    def _clusters_ready(self) -> bool:
        """Every cluster (and its endpoints) the new routes may name is held by the Envoy:
        ACKed, at its latest version or an earlier one, and the latest not rejected. A cluster
        new to the Envoy must be ACKed first; an updated one need not: Envoy keeps serving the
        version it has until the new one has warmed, so routes naming it never point at
        nothing. After a NACK the routes wait for a version the Envoy accepts."""
        clusters = self._target(CLUSTER_TYPE, None)
        cds = self.stream.types.get(CLUSTER_TYPE)
        # (Selections are shared: after an ACK of the target the Envoy holds that very mapping.)
        if cds is None or cds.status is SyncStatus.NACKED or \
                not (cds.acked is clusters or clusters.keys() <= cds.acked.keys()):
            return False
        wanted = self._target(ENDPOINT_TYPE, None)
        if not wanted:
            return True
        eds = self.stream.types.get(ENDPOINT_TYPE)
        return eds is not None and eds.status is not SyncStatus.NACKED and \
            (eds.acked is wanted or wanted.keys() <= eds.acked.keys())

    def _routes_settled(self) -> bool:
        for type_url in (LISTENER_TYPE, ROUTE_TYPE):
            state = self.stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            if self._lookup(type_url, state.names)[1] != state.acked_version \
                    or not state.acked_latest:
                return False
        return True

    # -------------------------------------------------------------- helpers

    def _resolve_group(self) -> None:
        self._targets = {}
        try:
            self.group = self.cache.node_group(self.stream.node)
            self.stream.region, self.stream.error = self.group.region, ""
            self._not_ready = self.cache.not_ready(self.group)
        except NodeRefused as exc:
            if str(exc) != self.stream.error:
                log.error("serving nothing to node %s: %s", printable(self.stream.node_id, 256), printable(str(exc)))
            self.group, self.stream.error = None, str(exc)

    def record_answer(self, state: Subscription, nonce: str, version: str, error: str | None) -> Answer:
        """Apply an ACK or NACK to `state` (see Answer), with its metrics and log line."""
        if error is not None:
            # Envoy's text is untrusted: a few KB at most, control characters escaped, before it
            # reaches a log line, /debug/clients or CSDS.
            error = printable(error)
        acked_before = state.acked_version
        answer = state.answer(nonce, version, error)
        if answer is not Answer.ANSWER:
            return answer
        kind = short(state.type_url)
        if error is not None:
            _child(self.metrics.nacks, kind).inc()
            log.warning("node %s NACKed %s version %s (it keeps running %s): %s", printable(self.stream.node_id),
                        kind, state.sent_version, printable(version) or "its previous config", error)
        elif acked_before != version and state.sent_at is not None:
            _child(self.metrics.ack_latency, kind).observe(time.time() - state.sent_at)
            _child(self.metrics.acks, kind).inc()
        return answer

    def mark_sent(self, state: Subscription, selection: Selection, version: str, nonce: str) -> None:
        state.mark_sent(selection, version, nonce)
        _child(self.metrics.pushes, short(state.type_url), self.MODE).inc()

    def on_request(self, request) -> Iterator[bytes]:
        raise NotImplementedError

    def send(self, type_url: str, state: Subscription, desired: Selection, version: str,
             force: bool = False) -> Iterator[bytes]:
        raise NotImplementedError


def _versioned(selection: Selection) -> tuple[Selection, str]:
    ordered = {n: selection[n] for n in sorted(selection)}  # (selections keep name order)
    return ordered, type_version(ordered.values())


@functools.lru_cache(maxsize=512)
def _child(metric, *labels):
    """A metric's child for these labels (prometheus_client's labels() takes a lock and
    builds a key on every call: thousands of times per edit at 1,000 streams)."""
    return metric.labels(*labels)


class SotwSession(Session):
    __slots__ = ()
    MODE = "sotw"

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> Iterator[bytes]:
        state = self.stream.subscription(request.type_url)
        error = request.error_detail.message if request.HasField("error_detail") else None
        answer = self.record_answer(state, request.response_nonce, request.version_info, error)
        if answer is Answer.STALE:
            return
        names = frozenset(request.resource_names)  # (in C: an EDS request names thousands)
        names = shared_names(names - {"*"} if "*" in names else names)
        state.names = None if request.type_url in WILDCARD_TYPES and not names else names
        state.subscribed = True
        yield from self.reconcile(resend=request.type_url if answer is Answer.AGAIN else None,
                                  types=AFFECTED.get(request.type_url, PUSH_ORDER))

    def send(self, type_url: str, state: Subscription, desired: Selection, version: str,
             force: bool = False) -> Iterator[bytes]:
        if version == state.sent_version and state.sent_nonce and not force:
            return
        # The same bytes for every stream sent this version (Responses.finished).
        nonce, response = self.responses.finished(self.responses.sotw(type_url, version, desired),
                                                  state.sent_nonce, self.next_nonce)
        self.mark_sent(state, desired, version, nonce)
        yield response


class DeltaSession(Session):
    __slots__ = ()
    MODE = "delta"

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Iterator[bytes]:
        type_url = request.type_url
        state = self.stream.subscription(type_url)
        error = request.error_detail.message if request.HasField("error_detail") else None
        # A Delta ACK carries no version: the client now holds what we sent. (A NACK restores
        # state.client to what the client held before, but for what the response sent: maybe
        # applied, so sent again or removed next time.)
        version = "" if error is not None else state.sent_version
        if self.record_answer(state, request.response_nonce, version, error) is Answer.STALE:
            return
        if not state.subscribed:
            state.subscribed = True
            state.client = dict(request.initial_resource_versions) or NOTHING_HELD
            state.client_version = ""
            subscribe = set(request.resource_names_subscribe)
            state.names = None if type_url in WILDCARD_TYPES and (not subscribe or "*" in subscribe) \
                else shared_names(subscribe - {"*"})
        elif request.resource_names_subscribe or request.resource_names_unsubscribe:
            if state.names is not None:
                state.names = shared_names((state.names | set(request.resource_names_subscribe))
                                           - set(request.resource_names_unsubscribe))
            # Asked for again (e.g. an updated cluster re-subscribes its endpoints): send it
            # again; unsubscribed: the client drops it, forget it.
            if state.client:
                state.client = self.responses.forget(state.client, frozenset(
                    (*request.resource_names_subscribe, *request.resource_names_unsubscribe)))
            state.client_version = ""
        yield from self.reconcile(types=AFFECTED.get(type_url, PUSH_ORDER))

    def send(self, type_url: str, state: Subscription, desired: Selection, version: str,
             force: bool = False) -> Iterator[bytes]:
        if state.nacked_version == version:
            return  # Envoy rejected exactly this: wait for a different version
        if state.client_version == version:
            return  # the client holds exactly this already (the common case: an ACK, nothing new)
        known = state.client if state.client is not None else NOTHING_HELD
        plan = self.responses.delta(type_url, known, desired, version, state.names)
        if not plan.parts:
            if state.sent_version != version:  # the client already holds exactly this (a reconnect)
                state.assume_held(desired, version)
            state.client, state.client_version = plan.after, version
            return
        if type_url == CLUSTER_TYPE and plan.updated:
            # An updated EDS cluster warms only when its endpoints arrive again, and a Delta client
            # does not re-subscribe names it already has: send those endpoints again after this.
            endpoints = self.stream.types.get(ENDPOINT_TYPE)
            if endpoints is not None and endpoints.client:
                endpoints.client = self.responses.forget(endpoints.client, plan.updated)
                endpoints.client_version = ""
        if type(known) is Held:  # a plan shared by the streams holding the same: so is its response
            nonce, response = self.responses.finished(plan.parts, state.sent_nonce, self.next_nonce)
        else:
            nonce = self.next_nonce()
            response = with_nonce(plan.parts, nonce)
        self.mark_sent(state, desired, version, nonce)
        state.client_before, state.client, state.client_version = known, plan.after, version
        yield response
