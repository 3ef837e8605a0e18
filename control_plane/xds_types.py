"""The xDS resource types this control plane serves, and the order a change is pushed in.

The one place the generic layers (snapshot, subscription, status, csds, server) and the
domain layer (resources) take type URLs from, so the xDS machinery does not depend on how
the gateway's resources are built.
"""

from __future__ import annotations

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# The order Envoy is sent a change in: what is referenced before what references it.
PUSH_ORDER = (SECRET_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
# Types an Envoy may subscribe to without names (all of them).
WILDCARD_TYPES = (CLUSTER_TYPE, LISTENER_TYPE)

_RANK = {type_url: i for i, type_url in enumerate(PUSH_ORDER)}


def short(type_url: str) -> str:
    """The message name a type URL ends with: "Cluster", "RouteConfiguration"..."""
    return type_url.rsplit(".", 1)[-1]


def push_rank(type_url: str) -> int:
    """Sort key: the push order, unknown types last."""
    return _RANK.get(type_url, len(PUSH_ORDER))
