"""What the resources are called and which regions serve what: resource and header
names, node groups, failover chains, upstream paths."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import RegionConfig

# Type URLs and push order are the generic layer's (xds_types, which every layer imports);
# re-exported for the builders.
from ..xds_types import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, PUSH_ORDER, ROUTE_TYPE, SECRET_TYPE  # noqa: F401

if TYPE_CHECKING:
    from .build import Build  # build.py imports the config only; names stays import-light

LISTENER_NAME = "ingress"
ROUTE_CONFIG_NAME = "vertex"
METADATA_NAMESPACE = "vertex"
# Headers used inside Envoy between the per-attempt filters; never accepted from clients.
# Each is copied from the chosen endpoint's metadata key of the same position.
TEMP_HEADERS = ("x-vertex-endpoint-path", "x-vertex-host", "x-vertex-region", "x-vertex-credential",
                "x-vertex-upstream-path", "x-vertex-tier")
# upstream_path: a custom backend's whole path, "{verb}" standing for the client's verb (Vertex
# regions have endpoint_path instead, the verb appended as ":{verb}"). tier: a capacity tier.
METADATA_KEYS = ("endpoint_path", "host", "region", "credential", "upstream_path", "tier")
CREDENTIAL_HEADER = "x-vertex-credential"
REGION_HEADER = TEMP_HEADERS[METADATA_KEYS.index("region")]
# "{chosen region}>{:authority}>{:path}" of the attempt under way: tells the per-attempt filters
# whether the request already fits its region (fitted_prefix). Temporary too, never accepted
# from clients.
ATTEMPT_HEADER = "x-vertex-attempt-region"
DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
BUFFER_FILTER = "envoy.filters.http.buffer"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SOCKET_MATCH = "envoy.transport_socket_match"  # endpoint metadata key transport_socket_matches read
PIN_HEADER = "x-vertex-pin-region"


@dataclass(frozen=True)
class NodeGroup:
    """What an Envoy's resources depend on; Envoys with equal groups get identical snapshots."""

    region: str
    listen_address: str
    listen_port: int


def stat_name(cluster_name: str) -> str:
    """A cluster's name in Envoy's stats: Envoy separates stat names with '.', so a model name's
    '.' (allowed in regions.yaml) would cut the name and its model and region tags apart; it is
    written '_' there (rules.py refuses two models that would then have one name)."""
    return cluster_name.replace(".", "_")


def name_stats(cluster):
    """The cluster (a Cluster message) with alt_stat_name set when its name holds a '.'."""
    if "." in cluster.name:
        cluster.alt_stat_name = stat_name(cluster.name)
    else:
        cluster.ClearField("alt_stat_name")
    return cluster


def cluster_name(model: str) -> str:
    return f"model/{model}"


def region_cluster_name(model: str, region: str) -> str:
    return f"model/{model}@{region}"


def tier_cluster_name(model: str, region: str, tier: str | None) -> str:
    """One (region, capacity tier) attempt of a model with `tiers`; None: the region's own cluster."""
    return region_cluster_name(model, region) + (f"/{tier}" if tier else "")


def attempts(config: RegionConfig, model: str, regions: list[str]) -> list[tuple[str, str | None]]:
    """The (region, tier) attempts for regions in order: each region's tiers in the model's order.
    A model without tiers: each region alone (tier None: the client's tier headers are kept). A
    model with tiers sets every attempt's tier ("default", no header, where a region has none
    listed): header edits persist across attempts, so a client's own could not come back."""
    tiers = config.models[model].tiers
    return [(r, t) for r in regions for t in (tiers.get(r) or ["default" if tiers else None])]


def first_region_cluster_name(model: str, region: str) -> str:
    """A weighted model's aggregate whose first attempt goes to `region` (see weighted_order)."""
    return f"model/{model}/first/{region}"


def failover_chain(config: RegionConfig, model: str, local_region: str,
                   avoided: frozenset[str] = frozenset()) -> list[str]:
    """Regions an Envoy in local_region tries for model, in order: its own, then its failover list."""
    served = set(config.models[model].served_regions)
    order = [local_region, *config.regions[local_region].failover]
    chain = [region for region in order if region in served]
    if avoided:  # regions the fleet's load reports say are failing go last (control_plane/lrs.py)
        chain = [r for r in chain if r not in avoided] + [r for r in chain if r in avoided]
    return chain


def members(build: Build, model: str, local_region: str) -> list[str]:
    """Regions that serve `model` to an Envoy in local_region, by the model's strategy: the
    failover chain in order, or the regions a weighted or least-request spread uses."""
    return build.memo(("members", model, local_region), lambda: _members(build, model, local_region))


def _members(build: Build, model: str, local_region: str) -> list[str]:
    spec = build.config.models[model]
    if spec.strategy == "failover":
        return failover_chain(build.config, model, local_region, build.avoided)
    if spec.strategy == "weighted":
        return [r for r in spec.served_regions if spec.weights.get(r, 0) > 0]  # weight 0 drains
    return list(spec.served_regions)


def route_region(build: Build, model: str, local_region: str) -> str | None:
    """The region whose path and host a model's routes write themselves, as a static route would:
    the first region of a failover chain, when it is a Vertex region and the model has no capacity
    tiers. The first attempt, when it goes there (the region is healthy: the usual case), then needs
    no per-attempt rewrite, and the per-attempt filters skip it (upstream.py); a retry, or a first
    attempt sent elsewhere, is rewritten per attempt as before. None: every attempt is."""
    return build.memo(("route_region", model, local_region), lambda: _route_region(build, model, local_region))


def _route_region(build: Build, model: str, local_region: str) -> str | None:
    config = build.config
    spec = config.models[model]
    if spec.strategy != "failover" or spec.tiers:
        return None
    if local_region in (spec.endpoints or spec.regions) and local_region not in build.avoided:
        # failover_chain's first region, without working out the chain: a full build asks for
        # every model in every region (5,000 chains at 1,000 x 5)
        first = local_region
    else:
        chain = members(build, model, local_region)
        first = chain[0] if chain else None
    return first if first is not None and not config.regions[first].custom else None


def fitted_prefix(config: RegionConfig, region: str) -> str:
    """How an attempt's ATTEMPT_HEADER starts when the request already carries the path and host
    the route writes for `region` and the attempt goes there: that region, its host, a path in
    that region (a /v1beta1 OpenAI path does not fit: it is rewritten per attempt)."""
    return f"{region}>{config.host_of(region)}>/v1/projects/{config.project}/locations/{region}/"


def weighted_order(config: RegionConfig, model: str, first: str) -> list[str]:
    """A weighted model's attempt order when the weighted pick chose `first`: that region, then
    the other regions with weight > 0, heaviest first (ties in config order). The route picks
    one such order per request by weight; its aggregate's priorities and previous_priorities
    then make every retry go to a region that request has not tried."""
    spec = config.models[model]
    rest = [r for r in spec.served_regions if r != first and spec.weights.get(r, 0) > 0]
    return [first, *sorted(rest, key=lambda r: -spec.weights[r])]


def pinnable(build: Build, model: str, local_region: str) -> list[str]:
    """Regions a request for `model` may be pinned to at an Envoy in local_region: the regions it
    uses, and for a weighted model also those drained with weight 0 (an operator checks a drained
    region through a pin before giving it traffic again)."""
    spec = build.config.models[model]
    if spec.strategy == "weighted":
        return list(spec.served_regions)
    return members(build, model, local_region)


def endpoint_path(config: RegionConfig, model: str, region: str) -> str:
    """Vertex path without the ':verb' suffix; for a custom backend, its path template."""
    spec = config.models[model]
    if config.regions[region].custom:
        return upstream_path(config, model, region)
    base = f"/v1/projects/{config.project}/locations/{region}"
    if spec.publisher_model:
        publisher, name = spec.publisher_model.split("/", 1)
        return f"{base}/publishers/{publisher}/models/{name}"
    return f"{base}/endpoints/{spec.endpoints[region]}"


def upstream_path(config: RegionConfig, model: str, region: str) -> str:
    """The path an attempt in `region` is sent to, "{verb}" standing for the client's verb."""
    spec = config.models[model]
    if not config.regions[region].custom:
        return endpoint_path(config, model, region) + ":{verb}"
    # the model's own path for this backend, else the backend's; validation ensures one exists
    template = spec.endpoints.get(region) or config.regions[region].path or ""
    return template.replace("{model}", model)


def backend_secret_name(backend: str) -> str:
    """The SDS secret holding a custom backend's header value or ID token ("Bearer ..."),
    named like the credential key that selects it."""
    return f"backend/{backend}"
