"""Who may call the gateway, decided in Envoy (the `clients:` section; no Python per request).

Applied on top of the listener, routes and clusters the other modules build, so a config
without `clients:` produces exactly what it did before.

- Authentication (client_auth.py). JWTs are verified by `jwt_authn` (one provider per issuer; JWKS inline from
  a file, or fetched by Envoy through a cluster `jwks/{issuer}` built here); a verified
  token's identity claim is copied into `x-vertex-client-jwt`. Client certificates are
  checked by the listener's TLS (client CA); a short Lua filter copies a *validated*
  certificate's URI and DNS SANs into `x-vertex-client-cert` (",san1,san2,"). Both headers
  are first removed from what the client sent (early header mutation), so only Envoy sets
  them. A token that fails verification gets jwt_authn's 401; a request with neither a valid
  token nor a validated certificate matches the first route, a 401.
- Authorization. Every route that names a model's cluster is replaced by one variant per
  grant (`clients.allow`) that allows that model, matching the grant's identities in those
  headers, then a 403 for any other identity. A grant limited to some regions gets its own
  cluster `model/{m}~{grant}` with only those regions, so its retries and failovers stay
  inside them; a pinned route outside them becomes a 403.
- 401/403 bodies are JSON like every other error Envoy produces (local reply mappers).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf.message import Message

from ..config import ClientGrant, RegionConfig
from ..wire import as_message
from .build import Build
from .client_auth import CERT_IDENTITY_HEADER, IDENTITY_HEADERS, JWT_IDENTITY_HEADER, jwks_cluster
from .clusters import spread_load_assignment
from .names import (
    BUFFER_FILTER,
    attempts,
    cluster_name,
    first_region_cluster_name,
    members,
    name_stats,
    region_cluster_name,
)
from .proto import _any, _re_escape, _regex


def restricted_cluster_name(model: str, grant: str, first: str | None = None) -> str:
    """A grant's copy of a model's cluster; of a weighted model's aggregate starting at `first`."""
    return f"model/{model}~{grant}" + (f"/first/{first}" if first else "")


# ---------------------------------------------------------------------- which regions a grant gets


def grant_members(build: Build, grant: ClientGrant, model: str, local_region: str) -> list[str]:
    """The regions (in order) an Envoy in local_region may use for `model` on behalf of `grant`."""
    chain = members(build, model, local_region)
    return chain if grant.regions is None else [r for r in chain if r in grant.regions]


def _is_restricted(build: Build, grant: ClientGrant, model: str, local_region: str) -> bool:
    allowed = grant_members(build, grant, model, local_region)
    return bool(allowed) and allowed != members(build, model, local_region)


def _grants_for(config: RegionConfig, model: str) -> list[tuple[str, ClientGrant]]:
    assert config.clients is not None
    return [(n, g) for n, g in config.clients.allow.items() if g.models is None or model in g.models]


# ---------------------------------------------------------------------- clusters


def client_clusters(build: Build, local_region: str, built: list[Message]) -> tuple[list[Message], list[Message]]:
    """Extra clusters (and EDS assignments): JWKS fetchers, and each region-restricted grant's
    copy of a model's cluster holding only the grant's regions. `built`: the clusters already
    built for this Envoy, from which the restricted copies are made."""
    config = build.config
    if config.clients is None:
        return [], []
    clusters: list[Message] = [jwks_cluster(name, issuer.jwks_source, issuer.jwks_ca_file)
                               for name, issuer in config.clients.jwt.items() if issuer.jwks_source]
    endpoints: list[Message] = []
    by_name = {c.name: c for c in built}
    for model in config.models:
        # A weighted model's route picks one aggregate per first region: restrict each.
        firsts: list[str | None] = members(build, model, local_region) \
            if config.models[model].strategy == "weighted" else [None]
        for grant_name, grant in _grants_for(config, model):
            if not _is_restricted(build, grant, model, local_region):
                continue
            allowed = grant_members(build, grant, model, local_region)
            for first in firsts:
                base = by_name.get(cluster_name(model) if first is None else first_region_cluster_name(model, first))
                if base is None or (first is not None and first not in allowed):
                    continue
                cluster = cluster_pb2.Cluster()
                cluster.CopyFrom(as_message(base))
                cluster.name = restricted_cluster_name(model, grant_name, first)
                name_stats(cluster)  # the copy's own stat name, if its name holds a '.'
                if cluster.HasField("cluster_type"):  # an aggregate of (region, tier) clusters, in order
                    aggregate = aggregate_pb2.ClusterConfig()
                    cluster.cluster_type.typed_config.Unpack(aggregate)
                    kept = [c for c in aggregate.clusters if _region_of(model, c) in allowed]
                    cluster.cluster_type.typed_config.CopyFrom(_any(aggregate_pb2.ClusterConfig(clusters=kept)))
                elif cluster.type == cluster_pb2.Cluster.EDS:  # a spread: its endpoints come by EDS
                    endpoints.append(_only_regions(spread_load_assignment(build, model, local_region),
                                                   cluster.name, allowed))
                else:
                    cluster.load_assignment.CopyFrom(_only_regions(cluster.load_assignment, cluster.name, allowed))
                clusters.append(cluster)
    return clusters, endpoints


def _region_of(model: str, cluster: str) -> str:
    """The region of a cluster named model/{m}@{region} or model/{m}@{region}/{tier}."""
    return cluster[len(region_cluster_name(model, "")):].split("/", 1)[0]


def _only_regions(assignment: endpoint_pb2.ClusterLoadAssignment, name: str,
                  regions: list[str]) -> endpoint_pb2.ClusterLoadAssignment:
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for locality in assignment.endpoints:
        kept = [e for e in locality.lb_endpoints
                if e.metadata.filter_metadata["vertex"].fields["region"].string_value in regions]
        if kept:
            copy = endpoint_components_pb2.LocalityLbEndpoints()
            copy.CopyFrom(locality)
            del copy.lb_endpoints[:]
            copy.lb_endpoints.extend(kept)
            out.endpoints.append(copy)
    return out


def authorize_routes(build: Build, local_region: str,
                     routes: list[route_components_pb2.Route]) -> list[route_components_pb2.Route]:
    """Per-identity variants of every route that names a model's cluster (see the module doc)."""
    config = build.config
    if config.clients is None:
        return routes
    targets = build.memo(("client_targets",), lambda: _targets(config))
    out = [_unauthenticated(config)]
    for route in routes:
        target = _target(route, targets)
        if target is None:
            out.append(route)
            continue
        model, pinned = target
        for grant_name, grant in _grants_for(config, model):
            out.extend(_grant_variants(build, local_region, route, model, pinned, grant_name, grant))
        out.append(_refusal(route, f"{route.name}~forbidden", 403, f"this client may not call model {model!r}"))
    return out


def _targets(config: RegionConfig) -> dict[str, tuple[str, str | None]]:
    """Cluster name -> (model, pinned region) of every cluster a model's route may name."""
    targets: dict[str, tuple[str, str | None]] = {cluster_name(m): (m, None) for m in config.models}
    targets.update({region_cluster_name(m, r): (m, r) for m in config.models for r in config.regions})
    targets.update({first_region_cluster_name(m, r): (m, None) for m in config.models for r in config.regions})
    return targets


def _target(route: route_components_pb2.Route, targets: dict) -> tuple[str, str | None] | None:
    """(model, pinned region) of a route naming a model's cluster (or a weighted pick of them)."""
    if not route.HasField("route"):
        return None
    if route.route.HasField("weighted_clusters"):
        picks = route.route.weighted_clusters.clusters
        return targets.get(picks[0].name) if picks else None
    return targets.get(route.route.cluster)


def _grant_variants(build: Build, local_region: str, route: route_components_pb2.Route, model: str,
                    pinned: str | None, grant_name: str, grant: ClientGrant) -> list[route_components_pb2.Route]:
    config = build.config
    allowed = grant_members(build, grant, model, local_region)
    if pinned is not None and grant.regions is not None and pinned not in grant.regions:
        variant = _refusal(route, "", 403, f"x-vertex-pin-region {pinned} is outside the regions this client "
                                           f"may use ({', '.join(grant.regions)})")
    elif pinned is None and not allowed:
        variant = _refusal(route, "", 403, f"model {model!r} is not served from this gateway in the regions "
                                           f"this client may use ({', '.join(grant.regions or [])})")
    else:
        variant = route_components_pb2.Route()
        variant.CopyFrom(route)
        if pinned is None and _is_restricted(build, grant, model, local_region):
            if variant.route.HasField("weighted_clusters"):  # only the allowed first regions, restricted
                picks = [route_components_pb2.WeightedCluster.ClusterWeight(
                    name=restricted_cluster_name(model, grant_name, first), weight=pick.weight)
                    for pick in variant.route.weighted_clusters.clusters
                    if (first := pick.name.rsplit("/first/", 1)[-1]) in allowed]
                variant.route.weighted_clusters.CopyFrom(route_components_pb2.WeightedCluster(clusters=picks))
            else:
                variant.route.cluster = restricted_cluster_name(model, grant_name)
            retry = variant.route.retry_policy
            if retry.HasField("num_retries"):  # a retry never revisits a (region, tier) attempt
                retry.num_retries.value = min(retry.num_retries.value,
                                              max(len(attempts(config, model, allowed)) - 1, 0))
        variant.request_headers_to_remove.extend(IDENTITY_HEADERS)
    out = []
    for header, matcher in _identity_matchers(config, grant):
        copy = route_components_pb2.Route()
        copy.CopyFrom(variant)
        copy.name = f"{route.name}~{grant_name}"
        copy.match.headers.append(route_components_pb2.HeaderMatcher(
            name=header, string_match=string_pb2.StringMatcher(safe_regex=_regex(matcher))))
        out.append(copy)
    return out


def _identity_matchers(config: RegionConfig, grant: ClientGrant) -> list[tuple[str, str]]:
    """(header, RE2 pattern) pairs: the grant's identities as a verified token's claim (exact)
    or as one of a validated certificate's SANs (",san1,san2,")."""
    clients = config.clients
    assert clients is not None
    anyone = "*" in grant.identities
    names = "|".join(_re_escape(i) for i in grant.identities if i != "*")
    out = []
    if clients.jwt:
        out.append((JWT_IDENTITY_HEADER, ".+" if anyone else f"(?:{names})"))
    if clients.mtls is not None:
        out.append((CERT_IDENTITY_HEADER, ".+" if anyone else f".*,(?:{names}),.*"))
    return out


def _unauthenticated(config: RegionConfig) -> route_components_pb2.Route:
    """First route: neither a verified token nor a validated certificate."""
    clients = config.clients
    assert clients is not None
    headers = [route_components_pb2.HeaderMatcher(name=h, present_match=True, invert_match=True)
               for h in IDENTITY_HEADERS]
    claims = sorted({issuer.claim for issuer in clients.jwt.values()})
    ways = ([f"a bearer token (Authorization: Bearer <JWT>) carrying the {'/'.join(claims)} claim"]
            if clients.jwt else []) + (["a client certificate"] if clients.mtls is not None else [])
    route = _refusal(route_components_pb2.Route(match=route_components_pb2.RouteMatch(prefix="/", headers=headers)),
                     "unauthenticated", 401, f"this gateway needs {' or '.join(ways)}")
    if clients.jwt:
        route.response_headers_to_add.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="www-authenticate", value="Bearer"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    return route


def _refusal(route: route_components_pb2.Route, name: str, status: int, message: str) -> route_components_pb2.Route:
    """A route with `route`'s match answering `status` itself; the local reply mapper makes the
    plain-text message a JSON error body."""
    return route_components_pb2.Route(
        name=name or route.name, match=route.match,
        direct_response=route_components_pb2.DirectResponseAction(
            status=status, body=base_pb2.DataSource(inline_string=message)),
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))})
