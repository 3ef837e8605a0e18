"""Who may call the gateway, decided in Envoy (the `clients:` section; no Python per request).

Applied on top of the listener, routes and clusters the other modules build, so a config
without `clients:` produces exactly what it did before.

- Authentication. JWTs are verified by `jwt_authn` (one provider per issuer; JWKS inline from
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

from urllib.parse import urlsplit

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, http_uri_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import empty_pb2, wrappers_pb2
from google.protobuf.message import Message

from ..config import ClientGrant, RegionConfig
from ..wire import as_message
from .build import Build
from .clusters import spread_load_assignment
from .names import (
    BUFFER_FILTER,
    DEFAULT_CA_FILE,
    attempts,
    cluster_name,
    first_region_cluster_name,
    members,
    region_cluster_name,
)
from .proto import _any, _duration, _is_ip, _re_escape, _regex, _socket, _struct

JWT_IDENTITY_HEADER = "x-vertex-client-jwt"
CERT_IDENTITY_HEADER = "x-vertex-client-cert"
IDENTITY_HEADERS = (JWT_IDENTITY_HEADER, CERT_IDENTITY_HEADER)
JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_CACHE_SIZE = 1000  # verified tokens remembered per Envoy worker and issuer
CERT_FILTER = "client-certificate"

# Runs before routing and clears the route cache (Lua's default), so the routes see the header.
CERT_IDENTITY_LUA = """
function envoy_on_request(h)
  local ssl = h:streamInfo():downstreamSslConnection()
  if ssl == nil or not ssl:peerCertificateValidated() then return end
  local names = {}
  for _, san in ipairs(ssl:uriSanPeerCertificate()) do
    if not string.find(san, ",", 1, true) then names[#names + 1] = san end
  end
  for _, san in ipairs(ssl:dnsSansPeerCertificate()) do names[#names + 1] = san end
  if #names > 0 then h:headers():replace("x-vertex-client-cert", "," .. table.concat(names, ",") .. ",") end
end
"""


def jwks_cluster_name(issuer: str) -> str:
    return f"jwks/{issuer}"


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
    clusters: list[Message] = [_jwks_cluster(name, issuer.jwks_source, issuer.jwks_ca_file)
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


def _jwks_cluster(issuer: str, uri: str, ca_file: str | None) -> cluster_pb2.Cluster:
    """Where Envoy fetches an issuer's signing keys: the URI's host, with TLS for https."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    cluster = cluster_pb2.Cluster(
        name=jwks_cluster_name(issuer), connect_timeout=_duration(5.0),
        type=cluster_pb2.Cluster.STATIC if _is_ip(host) else cluster_pb2.Cluster.LOGICAL_DNS,
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=jwks_cluster_name(issuer), endpoints=[endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=_socket(host, port)))])]))
    if parts.scheme == "https":
        validation = tls_common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(filename=ca_file or DEFAULT_CA_FILE))
        if not _is_ip(host):
            validation.match_typed_subject_alt_names.append(tls_common_pb2.SubjectAltNameMatcher(
                san_type=tls_common_pb2.SubjectAltNameMatcher.DNS, matcher=string_pb2.StringMatcher(exact=host)))
        tls = tls_pb2.UpstreamTlsContext(sni="" if _is_ip(host) else host,
                                         common_tls_context=tls_pb2.CommonTlsContext(validation_context=validation))
        cluster.transport_socket.CopyFrom(base_pb2.TransportSocket(name="envoy.transport_sockets.tls",
                                                                   typed_config=_any(tls)))
    return cluster


# ---------------------------------------------------------------------- listener


def secure_listener(config: RegionConfig, listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """The client listener with authentication: TLS with client certificates, the JWT and
    certificate filters first in the chain, identity headers scrubbed, JSON 401/403."""
    clients = config.clients
    if clients is None:
        return listener
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        for network_filter in chain.filters:
            if network_filter.name != "envoy.filters.network.http_connection_manager":
                continue
            manager = hcm_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            _secure_manager(config, manager)
            network_filter.typed_config.CopyFrom(_any(manager))
        if clients.mtls is not None:
            chain.transport_socket.CopyFrom(_downstream_tls(config))
    return out


def _secure_manager(config: RegionConfig, manager: hcm_pb2.HttpConnectionManager) -> None:
    clients = config.clients
    assert clients is not None
    manager.early_header_mutation_extensions.append(core_extension_pb2.TypedExtensionConfig(
        name="vertex.client-identity-scrub",
        typed_config=_any(early_mutation_pb2.HeaderMutation(mutations=[
            mutation_rules_pb2.HeaderMutation(remove=name) for name in IDENTITY_HEADERS]))))
    first: list[hcm_pb2.HttpFilter] = []
    if clients.jwt:
        first.append(hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=_any(jwt_authentication(config))))
    if clients.mtls is not None:
        first.append(hcm_pb2.HttpFilter(name=CERT_FILTER, typed_config=_any(lua_pb2.Lua(
            default_source_code=base_pb2.DataSource(inline_string=CERT_IDENTITY_LUA)))))
    filters = list(manager.http_filters)
    del manager.http_filters[:]
    manager.http_filters.extend(first + filters)
    mappers = list(manager.local_reply_config.mappers)
    del manager.local_reply_config.mappers[:]
    manager.local_reply_config.mappers.extend([_jwt_failure(), _json_status(401), _json_status(403)] + mappers)


def jwt_authentication(config: RegionConfig) -> jwt_pb2.JwtAuthentication:
    """One provider per issuer. A request may carry no token (it may have a client certificate;
    with neither, the routes answer 401), but a token that fails verification is refused."""
    assert config.clients is not None
    providers = {}
    for name, issuer in config.clients.jwt.items():
        provider = jwt_pb2.JwtProvider(
            issuer=issuer.issuer, audiences=issuer.audiences,
            # Only `Authorization: Bearer` (not the default ?access_token=, which would reach Vertex
            # in the query string); removed once verified (forward=False).
            from_headers=[jwt_pb2.JwtHeader(name="authorization", value_prefix="Bearer ")], forward=False,
            claim_to_headers=[jwt_pb2.JwtClaimToHeader(header_name=JWT_IDENTITY_HEADER, claim_name=issuer.claim)],
            clear_route_cache=True,  # the routes match the identity header it sets
            # The verified claims, for the access log's client fields (resources/observability.py).
            payload_in_metadata="client",
            # Verified tokens are cached per worker (expiry still checked on every request): a client
            # reuses its token for up to an hour, so the signature is checked once, not per request.
            jwt_cache_config=jwt_pb2.JwtCacheConfig(jwt_cache_size=JWT_CACHE_SIZE))
        if issuer.jwks_file:
            provider.local_jwks.CopyFrom(base_pb2.DataSource(filename=issuer.jwks_file))
        else:
            provider.remote_jwks.CopyFrom(jwt_pb2.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(uri=issuer.jwks_source, cluster=jwks_cluster_name(name),
                                              timeout=_duration(5.0)),
                cache_duration=_duration(600.0),
                async_fetch=jwt_pb2.JwksAsyncFetch()))  # fetched when the listener starts, refreshed ahead
        providers[name] = provider
    requirement = jwt_pb2.JwtRequirement(requires_any=jwt_pb2.JwtRequirementOrList(requirements=[
        *(jwt_pb2.JwtRequirement(provider_name=n) for n in providers),
        jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty())]))
    return jwt_pb2.JwtAuthentication(providers=providers, rules=[jwt_pb2.RequirementRule(
        match=route_components_pb2.RouteMatch(prefix="/"), requires=requirement)])


def _downstream_tls(config: RegionConfig) -> base_pb2.TransportSocket:
    mtls = config.clients.mtls  # type: ignore[union-attr]
    tls = tls_pb2.DownstreamTlsContext(
        # Optional at the TLS layer so a JWT client needs no certificate; one that is presented
        # must chain to the CA (else the handshake fails), and without either the routes say 401.
        require_client_certificate=wrappers_pb2.BoolValue(value=False),
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[tls_common_pb2.TlsCertificate(
                certificate_chain=base_pb2.DataSource(filename=mtls.cert_file),
                private_key=base_pb2.DataSource(filename=mtls.key_file))],
            validation_context=tls_common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=mtls.ca_file))))
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(tls))


def _jwt_failure() -> hcm_pb2.ResponseMapper:
    """jwt_authn answers 403 for a token whose audience is not allowed; a token that is not for
    this gateway is no credential at all, so every jwt_authn refusal is a 401 (CEL on the
    reply's code details, which jwt_authn sets to jwt_authn_access_denied{...})."""
    cel = cel_pb2.ExpressionFilter(expression='response.code_details.startsWith("jwt_authn_access_denied")')
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(extension_filter=accesslog_pb2.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel", typed_config=_any(cel))),
        status_code=wrappers_pb2.UInt32Value(value=401),
        body_format_override=_json_body(401))


def _json_body(status: int) -> substitution_format_string_pb2.SubstitutionFormatString:
    return substitution_format_string_pb2.SubstitutionFormatString(
        json_format=_struct({"error": {"code": status, "message": "%LOCAL_REPLY_BODY%"}}),
        content_type="application/json")


def _json_status(status: int) -> hcm_pb2.ResponseMapper:
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=status, runtime_key="vertex_gateway.unused")))),
        body_format_override=_json_body(status))


# ---------------------------------------------------------------------- routes


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
