"""Region config -> Envoy resources, as pure functions.

Shape (the "double rewrite" of docs/SPEC.md; README.md, "Architecture"):

  listener "ingress" --RDS--> route config "vertex"
     route per model --> aggregate cluster "model/{m}"  (local region first, then its failover list)
                           +- cluster "model/{m}@{region}" per region, EDS endpoints whose
                              metadata vertex.{region, host, endpoint_path} says where to send
                              (a custom backend: upstream_path instead of endpoint_path)
  Upstream HTTP filters on the *aggregate* run once per attempt after the host is picked:
  header_mutation copies that host's metadata into temporary headers, Lua rewrites :path and
  :authority from them. So a retry in another region carries that region's path and host.

A `weighted` model's route picks by weight one of its aggregates "model/{m}/first/{region}"
(that region first, then the others): the pick spreads first attempts, the aggregate's
priorities keep every retry off the regions already tried. A `least_request` model's route
names one "spread" cluster, every region's endpoint in one priority; the same upstream
filters do the rewrite.

Modules: build (one build of a config: what is built once for every node group, and what a
reload takes over), names (type URLs, names, which regions serve what), clusters, upstream
(per-attempt filters, token secrets), routes, listener, clients (who may call: authentication
and per-identity routes, applied on top of the others), shapes (models alike written from one
stand-in), proto (message helpers), wire (resources assembled from pre-serialized parts).
Everything here is a pure function of (build, node group): no I/O, no clock.
"""


from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf.message import Message

from ..wire import Serialized, as_message
from . import shapes
from .build import Build
from .client_auth import secure_listener
from .clients import client_clusters
from .clusters import (
    aggregate_cluster,
    first_region_cluster,
    load_assignment,
    region_cluster,
    spread_cluster,
    spread_load_assignment,
)
from .listener import listener
from .names import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_NAME,
    LISTENER_TYPE,
    METADATA_NAMESPACE,
    PIN_HEADER,
    PUSH_ORDER,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    SECRET_TYPE,
    TEMP_HEADERS,
    NodeGroup,
    attempts,
    cluster_name,
    endpoint_path,
    failover_chain,
    members,
    name_stats,
    pinnable,
    region_cluster_name,
    upstream_path,
)
from .observability import collector_cluster
from .proto import _is_ip
from .routes import route_configuration
from .upstream import (
    REWRITE_LUA,
    Injection,
    credential_secret,
    credential_secret_name,
    token_secret,
    token_secret_name,
    upstream_filters,
)

__all__ = [
    "CLUSTER_TYPE", "ENDPOINT_TYPE", "LISTENER_NAME", "LISTENER_TYPE", "METADATA_NAMESPACE", "PIN_HEADER",
    "PUSH_ORDER", "REWRITE_LUA", "ROUTE_CONFIG_NAME", "ROUTE_TYPE", "SECRET_TYPE", "TEMP_HEADERS", "Build",
    "NodeGroup", "aggregate_cluster", "attempts", "build_resources", "build_serialized", "Serialized", "first_region_cluster", "cluster_name", "endpoint_path", "failover_chain", "listener",
    "load_assignment", "members", "region_cluster", "region_cluster_name", "route_configuration",
    "spread_cluster", "spread_load_assignment", "token_secret", "token_secret_name", "upstream_filters",
    "Injection", "credential_secret", "credential_secret_name", "upstream_path",
]


def build_resources(build: Build, group: NodeGroup) -> dict[str, list[Message]]:
    """Every resource one Envoy (of this node group) is served, by type URL, as messages: what
    build_serialized() serves, parsed (for tests and tools)."""
    return {type_url: [as_message(r) for r in resources]
            for type_url, resources in build_serialized(build, group).items()}


def build_serialized(build: Build, group: NodeGroup, shaped: bool = True) -> dict[str, list[Message | Serialized]]:
    """Every resource one Envoy (of this node group) is served, by type URL; the large ones
    already serialized (wire.py). What node groups share is built once per `build`.
    `shaped`: models alike but for names and ids are written from their shape (shapes.py;
    False for tests comparing with the ordinary build)."""
    config = build.config
    clusters: list[Message | Serialized] = []
    endpoints: list[Message | Serialized] = []
    for model in config.models:
        # A reload that leaves this model (and all but the models) as it was takes these over.
        model_clusters, model_endpoints = build.memo_model(model, ("resources", group.region),
                                                           lambda: _model_resources(build, model, group.region,
                                                                                    shaped))
        clusters += model_clusters
        endpoints += model_endpoints
    # `clients:` (who may call): extra clusters, the listener's authentication, per-identity routes.
    extra_clusters, extra_endpoints = client_clusters(build, group.region, clusters)
    collector = collector_cluster(config.observability.tracing)
    if collector is not None:
        extra_clusters = [*extra_clusters, collector]
    return {
        SECRET_TYPE: [],
        CLUSTER_TYPE: clusters + [_with_stat_name(c) for c in extra_clusters],
        ENDPOINT_TYPE: endpoints + extra_endpoints,
        LISTENER_TYPE: [secure_listener(config, listener(group, config.observability))],
        ROUTE_TYPE: [route_configuration(build, group.region, shaped)],
    }


Built = tuple[tuple[Message | Serialized, ...], tuple[Message | Serialized, ...]]


def _with_stat_name(cluster: Message | Serialized) -> Message | Serialized:
    """The cluster, with alt_stat_name when its name holds a '.' (names.stat_name). The model
    clusters' builders set it (and shapes fill it); this catches the others (a JWKS issuer's,
    the collector's), as a copy: the message may be shared."""
    if "." not in cluster.name or cluster.name.startswith(cluster_name("")):
        return cluster
    if isinstance(cluster, Serialized):
        message = as_message(cluster)  # parsed: a message of its own
    else:
        message = type(cluster)()
        message.CopyFrom(cluster)
    return name_stats(message)


def _model_resources(build: Build, model: str, local_region: str, shaped: bool = False) -> Built:
    """One model's clusters and endpoints at an Envoy of local_region."""
    if shaped:
        found = shapes.shaped(build, model, local_region, "resources", _model_resources)
        if found is not None:
            return found
    config = build.config
    spec = config.models[model]
    regions = members(build, model, local_region)
    if not regions:
        return (), ()
    clusters: list[Message | Serialized] = []
    endpoints: list[Message | Serialized] = []
    if spec.strategy == "failover":
        clusters.append(aggregate_cluster(build, model, local_region))
    elif spec.strategy == "weighted":
        clusters += [first_region_cluster(build, model, local_region, first) for first in regions]
    else:
        spread = spread_cluster(build, model, local_region)
        clusters.append(spread)
        if spread.type == cluster_pb2.Cluster.EDS:
            endpoints.append(spread_load_assignment(build, model, local_region))
    # What the aggregates and the pins name: each region's own cluster, and for a model with
    # capacity tiers one cluster per (region, tier) attempt.
    targets = [(r, None) for r in pinnable(build, model, local_region)]
    targets += [(r, t) for r, t in attempts(config, model, regions) if t]
    for region, tier in targets:
        # The same for every Envoy whatever its region: built once per build.
        clusters.append(build.memo_model(model, ("region_cluster", region, tier),
                                         lambda: region_cluster(build, model, region, tier)))
        if _is_ip(config.regions[region].address):
            endpoints.append(build.memo_model(model, ("load_assignment", region, tier),
                                              lambda: load_assignment(config, model, region, tier)))
    return tuple(clusters), tuple(endpoints)
