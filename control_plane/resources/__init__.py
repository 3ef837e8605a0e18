"""Region config -> Envoy resources, as pure functions.

Shape (DESIGN-NOTES, "Per-attempt double rewrite"):

  listener "ingress" --RDS--> route config "vertex"
     route per model --> aggregate cluster "model/{m}"  (local region first, then its failover list)
                           +- cluster "model/{m}@{region}" per region, EDS endpoints whose
                              metadata vertex.{region, host, endpoint_path} says where to send
                              (a custom backend: upstream_path instead of endpoint_path)
  Upstream HTTP filters on the *aggregate* run once per attempt after the host is picked:
  header_mutation copies that host's metadata into temporary headers, Lua rewrites :path and
  :authority from them. So a retry in another region carries that region's path and host.

A `weighted` or `least_request` model's route names one "spread" cluster instead, holding
every region's endpoint in one priority; the same upstream filters do the rewrite.

Modules: names (type URLs, names, which regions serve what), clusters, upstream (per-attempt
filters, token secrets), routes, listener, clients (who may call: authentication and
per-identity routes, applied on top of the others), proto (message helpers).
Everything here is a pure function of (config, node group): no I/O, no clock.
"""


from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf.message import Message

from ..config import RegionConfig
from .clients import authorize_routes, client_clusters, secure_listener
from .clusters import aggregate_cluster, load_assignment, region_cluster, spread_cluster, spread_load_assignment
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
    cluster_name,
    endpoint_path,
    failover_chain,
    members,
    region_cluster_name,
    upstream_path,
)
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
    "PUSH_ORDER", "REWRITE_LUA", "ROUTE_CONFIG_NAME", "ROUTE_TYPE", "SECRET_TYPE", "TEMP_HEADERS", "NodeGroup",
    "aggregate_cluster", "build_resources", "cluster_name", "endpoint_path", "failover_chain", "listener",
    "load_assignment", "members", "region_cluster", "region_cluster_name", "route_configuration",
    "spread_cluster", "spread_load_assignment", "token_secret", "token_secret_name", "upstream_filters",
    "Injection", "credential_secret", "credential_secret_name", "upstream_path",
]


def build_resources(config: RegionConfig, group: NodeGroup) -> dict[str, list[Message]]:
    """Every resource one Envoy (of this node group) is served, by type URL."""
    clusters: list[Message] = []
    endpoints: list[Message] = []
    for model, spec in config.models.items():
        regions = members(config, model, group.region)
        if not regions:
            continue
        if spec.strategy == "failover":
            clusters.append(aggregate_cluster(config, model, group.region))
        else:
            clusters.append(spread_cluster(config, model, group.region))
            if clusters[-1].type == cluster_pb2.Cluster.EDS:
                endpoints.append(spread_load_assignment(config, model, group.region))
        for region in regions:  # failover members; for a spread, the targets of pinned requests
            # The same for every Envoy whatever its region: built once per config.
            clusters.append(config.memo(("region_cluster", model, region),
                                        lambda: region_cluster(config, model, region)))
            if _is_ip(config.regions[region].address):
                endpoints.append(config.memo(("load_assignment", model, region),
                                             lambda: load_assignment(config, model, region)))
    # `clients:` (who may call): extra clusters, the listener's authentication, per-identity routes.
    extra_clusters, extra_endpoints = client_clusters(config, group.region, clusters)
    return {
        SECRET_TYPE: [],
        CLUSTER_TYPE: clusters + extra_clusters,
        ENDPOINT_TYPE: endpoints + extra_endpoints,
        LISTENER_TYPE: [secure_listener(config, listener(group))],
        ROUTE_TYPE: [authorize_routes(config, group.region, route_configuration(config, group.region))],
    }


