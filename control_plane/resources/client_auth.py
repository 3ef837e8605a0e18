"""Who is calling, decided in Envoy: the listener's side of the `clients:` section (see
clients.py for the whole design). JWTs verified by `jwt_authn` (JWKS inline or fetched through
a `jwks/{issuer}` cluster), a validated client certificate's SANs copied by a short Lua filter;
both identity headers first removed from what the client sent; 401/403 bodies in JSON."""

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

from ..config import RegionConfig
from .names import (
    DEFAULT_CA_FILE,
)
from .proto import _any, _duration, _is_ip, _socket, _struct

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


def jwks_cluster(issuer: str, uri: str, ca_file: str | None) -> cluster_pb2.Cluster:
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
