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
- listeners and routes wait until those clusters and their endpoints are ACKed;
- clusters no longer wanted are removed only once the new routes are ACKed.

Protocol points (xDS spec, "ACK/NACK and versioning"):
- a request whose nonce is not the latest sent for its type is stale and ignored;
- a NACK is recorded and logged, and the version it rejected is never sent again (no
  NACK loop); the next *different* version is;
- versions are content hashes: an unchanged selection is never re-sent, and a Delta
  client that reconnects is sent nothing it already has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from .metrics import Metrics
from .snapshot import type_version
from .status import ClientStream, printable
from .subscription import Answer, Subscription, shared_names
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

CONTROL_PLANE_ID = "vertex-gateway"
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

    def __init__(self, cache: XdsCache, stream: ClientStream, metrics: Metrics, next_nonce: Callable[[], str]):
        self.cache = cache
        self.stream = stream
        self.metrics = metrics
        self.next_nonce = next_nonce
        self.group = None
        self._group_current = False  # the group is resolved again after each cache change

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
        not_ready = self.cache.not_ready(self.group)
        if not_ready:
            # e.g. Envoy must not serve traffic it cannot authenticate: nothing until the first tokens.
            self.stream.error = not_ready
            return
        for type_url in types:
            state = self.stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            desired = self.desired(type_url, state)
            if desired is not None:
                yield from self.send(type_url, state, desired, force=type_url == resend)

    # -------------------------------------------------------------- make-before-break

    def desired(self, type_url: str, state: Subscription) -> Selection | None:
        """What the Envoy should hold of this type now; None: hold what it has."""
        target = self._target(type_url, state.names)
        if type_url == CLUSTER_TYPE:
            held = state.acked
            if held.keys() <= target.keys() or self._routes_settled():
                return target  # nothing to keep, or routes no longer name the old clusters
            return {**held, **target}
        if type_url == ENDPOINT_TYPE:
            # Endpoints follow the Envoy's subscription, which keeps naming clusters still held.
            held = {n: r for n, r in state.acked.items()
                    if n not in target and (state.names is None or n in state.names)}
            return {**held, **target} if held else target
        if type_url in (LISTENER_TYPE, ROUTE_TYPE) and not self._clusters_ready():
            return None
        return target

    def _target(self, type_url: str, names) -> Selection:
        return self.cache.target(self.group, type_url, names)[0]

    def version_of(self, type_url: str, state: Subscription, desired: Selection) -> str:
        target, version = self.cache.target(self.group, type_url, state.names)
        return version if desired is target else type_version([desired[n] for n in sorted(desired)])

    def _clusters_ready(self) -> bool:
        """Every cluster (and its endpoints) the new routes may name has been ACKed."""
        clusters = self._target(CLUSTER_TYPE, None)
        cds = self.stream.types.get(CLUSTER_TYPE)
        if cds is None or not clusters.keys() <= cds.sent.keys() or not cds.acked_latest:
            return False
        eds = self.stream.types.get(ENDPOINT_TYPE)
        wanted = self._target(ENDPOINT_TYPE, None).keys()
        if not wanted:
            return True
        return eds is not None and wanted <= eds.sent.keys() and eds.acked_latest

    def _routes_settled(self) -> bool:
        for type_url in (LISTENER_TYPE, ROUTE_TYPE):
            state = self.stream.types.get(type_url)
            if state is None or not state.subscribed:
                continue
            if self.cache.target(self.group, type_url, state.names)[1] != state.acked_version \
                    or not state.acked_latest:
                return False
        return True

    # -------------------------------------------------------------- helpers

    def _resolve_group(self) -> None:
        try:
            self.group = self.cache.node_group(self.stream.node)
            self.stream.region, self.stream.error = self.group.region, ""
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
            self.metrics.nacks.labels(kind).inc()
            log.warning("node %s NACKed %s version %s (it keeps running %s): %s", printable(self.stream.node_id),
                        kind, state.sent_version, printable(version) or "its previous config", error)
        elif acked_before != version and state.sent_at is not None:
            self.metrics.ack_latency.labels(kind).observe(time.time() - state.sent_at)
            self.metrics.acks.labels(kind).inc()
        return answer

    def mark_sent(self, state: Subscription, selection: Selection, version: str) -> str:
        nonce = self.next_nonce()
        state.mark_sent(selection, version, nonce)
        self.metrics.pushes.labels(short(state.type_url), self.MODE).inc()
        return nonce

    def on_request(self, request) -> Iterator[bytes]:
        raise NotImplementedError

    def send(self, type_url: str, state: Subscription, desired: Selection, force: bool = False) -> Iterator[bytes]:
        raise NotImplementedError


class SotwSession(Session):
    MODE = "sotw"

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> Iterator[bytes]:
        state = self.stream.subscription(request.type_url)
        error = request.error_detail.message if request.HasField("error_detail") else None
        answer = self.record_answer(state, request.response_nonce, request.version_info, error)
        if answer is Answer.STALE:
            return
        names = shared_names(n for n in request.resource_names if n != "*")
        state.names = None if request.type_url in WILDCARD_TYPES and not names else names
        state.subscribed = True
        yield from self.reconcile(resend=request.type_url if answer is Answer.AGAIN else None,
                                  types=AFFECTED.get(request.type_url, PUSH_ORDER))

    def send(self, type_url: str, state: Subscription, desired: Selection, force: bool = False) -> Iterator[bytes]:
        version = self.version_of(type_url, state, desired)
        if version == state.sent_version and state.sent_nonce and not force:
            return
        selection = [desired[n] for n in sorted(desired)]
        nonce = self.mark_sent(state, desired, version)
        header = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=type_url, nonce=nonce,
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
        yield header.SerializeToString() + b"".join(r.response_entry for r in selection)


class DeltaSession(Session):
    MODE = "delta"

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> Iterator[bytes]:
        type_url = request.type_url
        state = self.stream.subscription(type_url)
        error = request.error_detail.message if request.HasField("error_detail") else None
        # A Delta ACK carries no version: the client now holds what we sent. (A NACK restores
        # state.client to what the client held before: it applied nothing.)
        version = "" if error is not None else state.sent_version
        if self.record_answer(state, request.response_nonce, version, error) is Answer.STALE:
            return
        if not state.subscribed:
            state.subscribed = True
            state.client, state.client_version = dict(request.initial_resource_versions), ""
            subscribe = set(request.resource_names_subscribe)
            state.names = None if type_url in WILDCARD_TYPES and (not subscribe or "*" in subscribe) \
                else shared_names(subscribe - {"*"})
        elif request.resource_names_subscribe or request.resource_names_unsubscribe:
            if state.names is not None:
                state.names = shared_names((state.names | set(request.resource_names_subscribe))
                                           - set(request.resource_names_unsubscribe))
            client = state.client if state.client is not None else {}
            # Asked for again (e.g. an updated cluster re-subscribes its endpoints): send it
            # again; unsubscribed: the client drops it, forget it.
            for name in (*request.resource_names_subscribe, *request.resource_names_unsubscribe):
                client.pop(name, None)
            state.client_version = ""
        yield from self.reconcile(types=AFFECTED.get(type_url, PUSH_ORDER))

    def send(self, type_url: str, state: Subscription, desired: Selection, force: bool = False) -> Iterator[bytes]:
        version = self.version_of(type_url, state, desired)
        if state.nacked_version == version:
            return  # Envoy rejected exactly this: wait for a different version
        if state.client_version == version:
            return  # the client holds exactly this already (the common case: an ACK, nothing new)
        known = state.client if state.client is not None else {}
        changed = [desired[n] for n in sorted(desired) if known.get(n) != desired[n].version]
        in_scope: Callable[[str], bool] = (lambda n: True) if state.names is None else (lambda n: n in state.names)
        removed = sorted(n for n in known if n not in desired and in_scope(n))
        if not changed and not removed:
            if state.sent_version != version:  # the client already holds exactly this (a reconnect)
                state.assume_held(desired, version)
            state.client_version = version
            return
        if type_url == CLUSTER_TYPE:
            # An updated EDS cluster warms only when its endpoints arrive again, and a Delta client
            # does not re-subscribe names it already has: send those endpoints again after this.
            endpoints = self.stream.types.get(ENDPOINT_TYPE)
            if endpoints is not None and endpoints.client:
                for resource in changed:
                    if resource.name in known:
                        endpoints.client.pop(resource.name, None)
                        endpoints.client_version = ""
        nonce = self.mark_sent(state, desired, version)
        client = dict(known)
        for resource in changed:
            client[resource.name] = resource.version
        for name in removed:
            client.pop(name, None)
        state.client_before, state.client, state.client_version = known, client, version
        header = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed,
            control_plane=base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID))
        yield header.SerializeToString() + b"".join(r.delta_entry for r in changed)
