"""Region config -> Envoy resources, as pure functions.

Shape (DESIGN-NOTES, "Per-attempt double rewrite"):

  listener "ingress" --RDS--> route config "vertex"
     route per model --> aggregate cluster "model/{m}"  (local region first, then its failover list)
                           +- cluster "model/{m}@{region}" per region, EDS endpoints whose
                              metadata vertex.{region, host, endpoint_path} says where to send
  Upstream HTTP filters on the *aggregate* run once per attempt after the host is picked:
  header_mutation copies that host's metadata into temporary headers, Lua rewrites :path and
  :authority from them. So a retry in another region carries that region's path and host.

Everything here is a pure function of (config, node group): no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.common.matcher.v3 import matcher_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2 as early_mutation_pb2
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2 as generic_credential_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2, range_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2 as xds_matcher_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from .config import PUBLISHER_VERBS, STREAMING_VERBS, VERBS, Policy, RegionConfig

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# The order Envoy is sent a change in: what is referenced before what references it.
PUSH_ORDER = (SECRET_TYPE, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)

LISTENER_NAME = "ingress"
ROUTE_CONFIG_NAME = "vertex"
METADATA_NAMESPACE = "vertex"
# Headers used inside Envoy between the per-attempt filters; never accepted from clients.
# Each is copied from the chosen endpoint's metadata key of the same position.
TEMP_HEADERS = ("x-vertex-endpoint-path", "x-vertex-host", "x-vertex-region", "x-vertex-credential")
METADATA_KEYS = ("endpoint_path", "host", "region", "credential")
CREDENTIAL_HEADER = "x-vertex-credential"
DEFAULT_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
BUFFER_FILTER = "envoy.filters.http.buffer"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SOCKET_MATCH = "envoy.transport_socket_match"  # endpoint metadata key transport_socket_matches read
PIN_HEADER = "x-vertex-pin-region"

# Runs once per attempt, after the host is chosen. :path may already hold the previous
# attempt's rewrite (header edits persist across attempts), so only the verb and the query
# are taken from it; the rest comes from the chosen host's metadata.
REWRITE_LUA = """
function envoy_on_request(h)
  local hd = h:headers()
  local ep, authority = hd:get("x-vertex-endpoint-path"), hd:get("x-vertex-host")
  hd:remove("x-vertex-endpoint-path"); hd:remove("x-vertex-host"); hd:remove("x-vertex-region")
  hd:remove("x-vertex-credential")
  if ep == nil or ep == "" or authority == nil or authority == "" then
    h:respond({[":status"] = "502", ["content-type"] = "application/json"},
      '{"error": {"code": 502, "message": "selected upstream has no vertex metadata"}}')
    return
  end
  local path = hd:get(":path")
  local query = string.match(path, "%?.*$") or ""
  local verb = string.match(string.sub(path, 1, #path - #query), ":(%a+)$") or "predict"
  hd:replace(":path", ep .. ":" .. verb .. query)
  hd:replace(":authority", authority)
end
"""


@dataclass(frozen=True)
class NodeGroup:
    """What an Envoy's resources depend on; Envoys with equal groups get identical snapshots."""

    region: str
    listen_address: str
    listen_port: int


def cluster_name(model: str) -> str:
    return f"model/{model}"


def region_cluster_name(model: str, region: str) -> str:
    return f"model/{model}@{region}"


def failover_chain(config: RegionConfig, model: str, local_region: str) -> list[str]:
    """Regions an Envoy in local_region tries for model, in order: its own, then its failover list."""
    served = set(config.models[model].served_regions)
    order = [local_region, *config.regions[local_region].failover]
    return [region for region in order if region in served]


def members(config: RegionConfig, model: str, local_region: str) -> list[str]:
    """Regions that serve `model` to an Envoy in local_region, by the model's strategy: the
    failover chain in order, or the regions a weighted or least-request spread uses."""
    spec = config.models[model]
    if spec.strategy == "failover":
        return failover_chain(config, model, local_region)
    if spec.strategy == "weighted":
        return [r for r in spec.served_regions if spec.weights.get(r, 0) > 0]  # weight 0 drains
    return list(spec.served_regions)


def endpoint_path(config: RegionConfig, model: str, region: str) -> str:
    """Vertex path without the ':verb' suffix."""
    spec = config.models[model]
    base = f"/v1/projects/{config.project}/locations/{region}"
    if spec.publisher_model:
        publisher, name = spec.publisher_model.split("/", 1)
        return f"{base}/publishers/{publisher}/models/{name}"
    return f"{base}/endpoints/{spec.endpoints[region]}"


# --------------------------------------------------------------------------- helpers


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)  # map order (Structs) must not vary between processes
    return packed


def _struct(data: dict) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def _header(key: str, value: str, append: int = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
            ) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=append)


def _socket(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def _alternation(items: list[str]) -> str:
    return "|".join(_re_escape(item) for item in items)


def _re_escape(text: str) -> str:
    """RE2-safe escape of the few metacharacters names may contain."""
    return "".join("\\" + ch if ch in r".^$*+?()[]{}|\\-" else ch for ch in text)


# --------------------------------------------------------------------------- clusters


def region_cluster(config: RegionConfig, model: str, region: str) -> cluster_pb2.Cluster:
    """One region's Vertex endpoint for one model: TLS, outlier detection, endpoints via EDS.
    Under an aggregate its upstream filters never run; a pinned route names it directly."""
    spec = config.regions[region]
    policy = config.policy_for(model, region)
    cluster = cluster_pb2.Cluster(
        name=region_cluster_name(model, region),
        connect_timeout=_duration(min(5.0, policy.per_try_timeout)),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        outlier_detection=_outlier_detection(policy),
        # Default 1 s would delay the effect of an ejection on host selection.
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(update_merge_window=_duration(0)),
        circuit_breakers=_retry_budget(),
        typed_extension_protocol_options={HTTP_OPTIONS: _any(_http_options(
            config, model, [region], policy, http2=spec.http2))},
    )
    if _is_ip(spec.address):
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(_ads())
    else:
        # EDS carries IPs only; a hostname (e.g. a PSC DNS name) is resolved by Envoy.
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.load_assignment.CopyFrom(load_assignment(config, model, region))
    if spec.tls:
        cluster.transport_socket.CopyFrom(_tls_socket(config, region))
    return cluster


def _tls_socket(config: RegionConfig, region: str) -> base_pb2.TransportSocket:
    spec = config.regions[region]
    host = config.host_of(region)
    tls = tls_pb2.UpstreamTlsContext(
        # sni per region, not auto_sni: auto_sni would take the client's Host.
        sni=host,
        common_tls_context=tls_pb2.CommonTlsContext(
            alpn_protocols=["h2"] if spec.http2 else [],
            validation_context=tls_common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=spec.ca_file or DEFAULT_CA_FILE),
                match_typed_subject_alt_names=[tls_common_pb2.SubjectAltNameMatcher(
                    san_type=tls_common_pb2.SubjectAltNameMatcher.DNS,
                    matcher=string_pb2.StringMatcher(exact=host))],
            )))
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=_any(tls))


def _outlier_detection(policy: Policy) -> outlier_detection_pb2.OutlierDetection:
    od = policy.outlier_detection
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
        # Gateway errors (connect failure, reset, timeout) count like 5xx; keep one counter.
        consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=100),
        interval=_duration(od.interval),
        base_ejection_time=_duration(od.base_ejection_time),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
    )


def _retry_budget() -> circuit_breaker_pb2.CircuitBreakers:
    # Retries are admitted by the breaker of the cluster the route names; the default
    # max_retries=3 would refuse most concurrent failovers.
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[circuit_breaker_pb2.CircuitBreakers.Thresholds(
        priority=base_pb2.DEFAULT,
        retry_budget=circuit_breaker_pb2.CircuitBreakers.Thresholds.RetryBudget(
            budget_percent=_percent(100.0), min_retry_concurrency=wrappers_pb2.UInt32Value(value=1024)))])


def _http_options(config: RegionConfig, model: str, regions: list[str], policy: Policy,
                  http2: bool = False) -> http_protocol_options_pb2.HttpProtocolOptions:
    """The per-attempt upstream filters for the cluster a route names, and 429 as an outlier error."""
    explicit = http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions()) if http2 else \
        http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions())
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=explicit,
        http_filters=upstream_filters(sorted({config.profile_for(model, r) for r in regions})))
    if policy.outlier_detection.eject_on_429:
        # A region out of capacity answers 429: count it toward ejection like a 5xx, so new
        # requests skip the region instead of paying a wasted first attempt each. A matcher
        # replaces the default "5xx is an error" rule, so 5xx is listed too.
        def status(**match) -> matcher_pb2.MatchPredicate:
            return matcher_pb2.MatchPredicate(http_response_headers_match=matcher_pb2.HttpHeadersMatch(
                headers=[route_components_pb2.HeaderMatcher(name=":status", **match)]))

        options.outlier_detection.error_matcher.CopyFrom(matcher_pb2.MatchPredicate(
            or_match=matcher_pb2.MatchPredicate.MatchSet(rules=[
                status(string_match=string_pb2.StringMatcher(exact="429")),
                status(range_match=range_pb2.Int64Range(start=500, end=600))])))
    return options


def load_assignment(config: RegionConfig, model: str, region: str) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=region_cluster_name(model, region),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(region=region), lb_endpoints=[_lb_endpoint(config, model, region)])])


def _lb_endpoint(config: RegionConfig, model: str, region: str, weight: int = 0) -> endpoint_components_pb2.LbEndpoint:
    spec = config.regions[region]
    metadata = {METADATA_NAMESPACE: _struct({
        "region": region, "host": config.host_of(region), "endpoint_path": endpoint_path(config, model, region),
        "credential": config.profile_for(model, region)})}
    if spec.tls:  # a spread cluster picks each region's TLS settings by this key
        metadata[SOCKET_MATCH] = _struct({"region": region})
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_socket(spec.address, spec.port)),
        metadata=base_pb2.Metadata(filter_metadata=metadata))
    if weight:
        endpoint.load_balancing_weight.value = weight
    return endpoint


def spread_load_assignment(config: RegionConfig, model: str, local_region: str) -> endpoint_pb2.ClusterLoadAssignment:
    """Every member region's endpoint in one priority, weighted by the model's weights."""
    spec = config.models[model]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name(model),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
            _lb_endpoint(config, model, region, spec.weights.get(region, 1) if spec.weights else 1)
            for region in members(config, model, local_region)])])


def spread_cluster(config: RegionConfig, model: str, local_region: str) -> cluster_pb2.Cluster:
    """The cluster a weighted or least-request model's route names: all its regions in one
    priority. Retries move to a region not yet tried (previous_hosts: one host per region)."""
    spec = config.models[model]
    regions = members(config, model, local_region)
    policy = config.policy_for(model, local_region)
    cluster = cluster_pb2.Cluster(
        name=cluster_name(model),
        connect_timeout=_duration(min(5.0, policy.per_try_timeout)),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST if spec.strategy == "least_request"
        else cluster_pb2.Cluster.ROUND_ROBIN,
        outlier_detection=_outlier_detection(policy),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            update_merge_window=_duration(0),
            # With few hosts (one per region) the default 50% panic threshold would send traffic
            # to ejected regions as soon as half are out; never do that.
            healthy_panic_threshold=percent_pb2.Percent(value=0)),
        circuit_breakers=_retry_budget(),
        typed_extension_protocol_options={HTTP_OPTIONS: _any(_http_options(
            config, model, regions, policy, http2=all(config.regions[r].http2 for r in regions)))},
        transport_socket_matches=[cluster_pb2.Cluster.TransportSocketMatch(
            name=region, match=_struct({"region": region}), transport_socket=_tls_socket(config, region))
            for region in regions if config.regions[region].tls],
    )
    if all(_is_ip(config.regions[r].address) for r in regions):
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(_ads())
    else:
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.load_assignment.CopyFrom(spread_load_assignment(config, model, local_region))
    return cluster


def token_secret_name(profile: str) -> str:
    return f"token/{profile}"


def token_secret(profile: str, token: str) -> secret_pb2.Secret:
    """An access token as an SDS secret. The value carries the "Bearer " prefix because this
    API snapshot lacks Generic.header_value_prefix."""
    return secret_pb2.Secret(name=token_secret_name(profile), generic_secret=secret_pb2.GenericSecret(
        secret=base_pb2.DataSource(inline_string=f"Bearer {token}")))


def _credential_injector(profile: str) -> credential_injector_pb2.CredentialInjector:
    return credential_injector_pb2.CredentialInjector(
        overwrite=True,  # the client's own Authorization is replaced, never forwarded
        credential=core_extension_pb2.TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic",
            typed_config=_any(generic_credential_pb2.Generic(
                header="authorization",
                credential=secret_pb2.SdsSecretConfig(name=token_secret_name(profile), sds_config=_ads())))))


def _only_for_profile(profile: str, injector: credential_injector_pb2.CredentialInjector) -> Message:
    """Run the injector only on attempts whose chosen region uses this profile."""
    skip = xds_matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(
        name="skip", typed_config=_any(skip_action_pb2.SkipFilter())))
    header_is_profile = xds_matcher_pb2.Matcher.MatcherList.Predicate(
        single_predicate=xds_matcher_pb2.Matcher.MatcherList.Predicate.SinglePredicate(
            input=xds_extension_pb2.TypedExtensionConfig(
                name="credential", typed_config=_any(http_inputs_pb2.HttpRequestHeaderMatchInput(
                    header_name=CREDENTIAL_HEADER))),
            value_match=xds_string_pb2.StringMatcher(exact=profile)))
    return extension_matcher_pb2.ExtensionWithMatcher(
        extension_config=core_extension_pb2.TypedExtensionConfig(
            name="envoy.filters.http.credential_injector", typed_config=_any(injector)),
        xds_matcher=xds_matcher_pb2.Matcher(matcher_list=xds_matcher_pb2.Matcher.MatcherList(matchers=[
            xds_matcher_pb2.Matcher.MatcherList.FieldMatcher(
                predicate=xds_matcher_pb2.Matcher.MatcherList.Predicate(not_matcher=header_is_profile),
                on_match=skip)])))


def upstream_filters(profiles: list[str]) -> list[hcm_pb2.HttpFilter]:
    """Per-attempt filters on the aggregate cluster, in order: copy the chosen host's metadata
    into temporary headers, inject that region's token, rewrite :path/:authority, encode."""
    copy = [_header(name, f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{key})%")
            for name, key in zip(TEMP_HEADERS, METADATA_KEYS)]
    mutations = header_mutation_pb2.Mutations(request_mutations=[
        # Never carry a client's (or a previous attempt's) Authorization to another region.
        mutation_rules_pb2.HeaderMutation(remove="authorization"),
        *[mutation_rules_pb2.HeaderMutation(append=h) for h in copy],
    ])
    filters = [hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation",
                                  typed_config=_any(header_mutation_pb2.HeaderMutation(mutations=mutations)))]
    if len(profiles) == 1:  # the common case: one token for every region, no matcher needed
        filters.append(hcm_pb2.HttpFilter(name=f"credential/{profiles[0]}",
                                          typed_config=_any(_credential_injector(profiles[0]))))
    else:
        filters += [hcm_pb2.HttpFilter(name=f"credential/{p}", typed_config=_any(
            _only_for_profile(p, _credential_injector(p)))) for p in profiles]
    filters += [
        hcm_pb2.HttpFilter(name="envoy.filters.http.lua", typed_config=_any(lua_pb2.Lua(
            default_source_code=base_pb2.DataSource(inline_string=REWRITE_LUA)))),
        hcm_pb2.HttpFilter(name="envoy.filters.http.upstream_codec",
                           typed_config=_any(upstream_codec_pb2.UpstreamCodec())),
    ]
    return filters


def aggregate_cluster(config: RegionConfig, model: str, local_region: str) -> cluster_pb2.Cluster:
    """The cluster a failover model's route names: its regions in failover order, local first."""
    chain = failover_chain(config, model, local_region)
    return cluster_pb2.Cluster(
        name=cluster_name(model),
        connect_timeout=_duration(5.0),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.aggregate",
            typed_config=_any(aggregate_pb2.ClusterConfig(
                clusters=[region_cluster_name(model, r) for r in chain]))),
        circuit_breakers=_retry_budget(),
        # The wire protocol really comes from each region's cluster; these options carry the filters.
        typed_extension_protocol_options={HTTP_OPTIONS: _any(_http_options(
            config, model, chain, config.policy_for(model, local_region)))},
    )


def _percent(value: float) -> percent_pb2.Percent:
    return percent_pb2.Percent(value=value)


# --------------------------------------------------------------------------- routes


def _retry_policy(policy: Policy, attempts_available: int, by_priority: bool) -> route_components_pb2.RetryPolicy:
    # A retry goes to a region not yet tried; more retries than regions would revisit one.
    num_retries = min(policy.num_retries, attempts_available - 1) if attempts_available > 1 else policy.num_retries
    retry = route_components_pb2.RetryPolicy(
        retry_on=",".join(policy.retry_on),
        retriable_status_codes=policy.retriable_status_codes,
        num_retries=wrappers_pb2.UInt32Value(value=num_retries),
        per_try_timeout=_duration(policy.per_try_timeout),
        retry_host_predicate=[route_components_pb2.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=_any(previous_hosts_pb2.PreviousHostsPredicate()))],
        host_selection_retry_max_attempts=3,
    )
    if by_priority:  # failover: each region is a priority of the aggregate
        # Essential: without it a retry stays in the failing region.
        retry.retry_priority.CopyFrom(route_components_pb2.RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=_any(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1))))
    return retry


def _model_route(config: RegionConfig, model: str, local_region: str, name: str,
                 match: route_components_pb2.RouteMatch, streaming: bool = False,
                 pinned: str | None = None) -> route_components_pb2.Route:
    chain = [pinned] if pinned else members(config, model, local_region)
    if not chain:
        return route_components_pb2.Route(
            name=name, match=match,
            direct_response=_json_response(503, f"model {model!r} is not served from region "
                                                f"{local_region} or its failover regions"),
            response_headers_to_add=[_header("content-type", "application/json")])
    policy = config.policy_for(model, local_region)
    if pinned:  # that region only: no failover
        policy = policy.model_copy(update={"num_retries": 0})
    action = route_components_pb2.RouteAction(
        cluster=region_cluster_name(model, pinned) if pinned else cluster_name(model),
        retry_policy=_retry_policy(policy, len(chain), config.models[model].strategy == "failover"))
    retry = action.retry_policy
    if streaming:
        # A stream may rightly last longer than any whole-response timeout; what must be caught is
        # an attempt that sends nothing (a hang before the first byte, or a stall mid-stream).
        action.timeout.CopyFrom(_duration(0))
        retry.ClearField("per_try_timeout")
        retry.per_try_idle_timeout.CopyFrom(_duration(policy.per_try_timeout))
    else:
        action.timeout.CopyFrom(_duration(policy.timeout))
    return route_components_pb2.Route(
        name=name,
        match=match,
        route=action,
        request_headers_to_remove=[PIN_HEADER] if pinned else [],
        # A body must be buffered to be retried: the buffer filter holds up to this many bytes
        # (413 beyond), and the router keeps that much for the retry.
        request_body_buffer_limit=wrappers_pb2.UInt64Value(value=policy.max_request_bytes),
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(
            buffer=buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(
                value=policy.max_request_bytes))))},
    )


def _json_response(status: int, message: str, **extra) -> route_components_pb2.DirectResponseAction:
    body = json.dumps({"error": {"code": status, "message": message, **extra}}, sort_keys=True)
    return route_components_pb2.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=body))


def route_configuration(config: RegionConfig, local_region: str) -> route_pb2.RouteConfiguration:
    routes: list[route_components_pb2.Route] = []
    for model, spec in config.models.items():
        verbs = PUBLISHER_VERBS if spec.publisher_model else VERBS
        model_path = f"/v1/models/{_re_escape(model)}"
        if spec.publisher_model:
            publisher, name = spec.publisher_model.split("/", 1)
            native = (f"/v1/projects/[^/]+/locations/[^/]+/publishers/{_re_escape(publisher)}"
                      f"/models/{_re_escape(name)}")
        else:
            native = f"/v1/projects/[^/]+/locations/[^/]+/endpoints/({_alternation(sorted(set(spec.endpoints.values())))})"
        routes += _pin_routes(config, model, local_region, model_path, native, verbs)
        for streaming in (False, True):
            group = [v for v in verbs if (v in STREAMING_VERBS) == streaming]
            suffix = ":stream" if streaming else ""
            verb_re = f":({_alternation(group)})$"
            routes.append(_model_route(config, model, local_region, f"model:{model}{suffix}",
                                       _regex_match(f"^{model_path}{verb_re}"), streaming))
            routes.append(_model_route(config, model, local_region, f"native:{model}{suffix}",
                                       _regex_match(f"^{native}{verb_re}"), streaming))
    routes.append(_model_route(config, config.default_model, local_region, "predict",
                               route_components_pb2.RouteMatch(path="/predict")))
    routes.append(route_components_pb2.Route(
        name="not-found",
        match=route_components_pb2.RouteMatch(prefix="/"),
        direct_response=_json_response(
            404, "no such path on this gateway",
            paths=["POST /v1/models/{model}:{verb}", "POST /predict",
                   "POST /v1/projects/{project}/locations/{region}/endpoints/{endpoint_id}:{verb}",
                   "POST /v1/projects/{project}/locations/{region}/publishers/{publisher}/models/{model}:{verb}"],
            models=sorted(config.models), verbs=sorted(set(VERBS) | set(PUBLISHER_VERBS))),
        response_headers_to_add=[_header("content-type", "application/json")],
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))},
    ))
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[route_components_pb2.VirtualHost(
            name="vertex",
            domains=["*"],
            routes=routes,
            include_attempt_count_in_response=True,
            response_headers_to_add=[_header("x-vertex-region", f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:region)%")],
        )],
    )


def _pin_routes(config: RegionConfig, model: str, local_region: str, model_path: str, native: str,
                verbs: tuple[str, ...]) -> list[route_components_pb2.Route]:
    """`x-vertex-pin-region: R`: region R only, no failover (data residency, debugging). Only
    regions this Envoy would use for the model may be pinned; any other value gets a 400."""
    paths = f"(?:{model_path}|{native}):({_alternation(list(verbs))})"
    if model == config.default_model:
        paths = f"(?:{paths}|/predict)"
    allowed = members(config, model, local_region)

    def match(**header) -> route_components_pb2.RouteMatch:
        return route_components_pb2.RouteMatch(safe_regex=_regex(f"^{paths}$"), headers=[
            route_components_pb2.HeaderMatcher(name=PIN_HEADER, **header)])

    # One route per region covers unary and streaming verbs alike: no whole-request timeout,
    # an idle timeout per try instead (what a hang looks like either way).
    routes = [_model_route(config, model, local_region, f"pin:{model}@{region}",
                           match(string_match=string_pb2.StringMatcher(exact=region)), streaming=True,
                           pinned=region) for region in allowed]
    routes.append(route_components_pb2.Route(
        name=f"pin:{model}:refused", match=match(present_match=True),
        direct_response=_json_response(400, f"x-vertex-pin-region names a region that does not serve model "
                                            f"{model!r} from this gateway", allowed_regions=allowed),
        response_headers_to_add=[_header("content-type", "application/json")],
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))}))
    return routes


def _regex_match(pattern: str) -> route_components_pb2.RouteMatch:
    return route_components_pb2.RouteMatch(safe_regex=_regex(pattern))


# --------------------------------------------------------------------------- listener


def _client_header_scrub() -> core_extension_pb2.TypedExtensionConfig:
    """Before routing: drop what a client must not control. x-envoy-* would let it change
    retries and timeouts (x-envoy-max-retries, x-envoy-upstream-rq-timeout-ms...); the
    temporary x-vertex-* headers would let it pick the upstream path or host."""
    mutations = [mutation_rules_pb2.HeaderMutation(remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
        key_matcher=string_pb2.StringMatcher(prefix="x-envoy-")))]
    mutations += [mutation_rules_pb2.HeaderMutation(remove=name) for name in TEMP_HEADERS]
    return core_extension_pb2.TypedExtensionConfig(
        name="envoy.http.early_header_mutation.header_mutation",
        typed_config=_any(early_mutation_pb2.HeaderMutation(mutations=mutations)))


def _local_replies() -> hcm_pb2.LocalReplyConfig:
    """Errors Envoy itself produces (timeouts, no healthy region, body too large) as JSON, like
    Vertex's own errors. Replies from Vertex pass through untouched."""
    json_error = substitution_format_string_pb2.SubstitutionFormatString(
        json_format=_struct({"error": {"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%",
                                       "details": "%RESPONSE_CODE_DETAILS%"}}),
        content_type="application/json")
    too_large = substitution_format_string_pb2.SubstitutionFormatString(
        json_format=_struct({"error": {"code": 413, "message":
                                       "request body larger than this gateway buffers for failover "
                                       "(policy max_request_bytes)"}}),
        content_type="application/json")
    return hcm_pb2.LocalReplyConfig(mappers=[
        hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=accesslog_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(default_value=413, runtime_key="vertex_gateway.unused")))),
            body_format_override=too_large),
        hcm_pb2.ResponseMapper(
            # Any response flag: no healthy upstream, timeout, connect failure, reset ...
            filter=accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter()),
            body_format_override=json_error),
    ])


def listener(group: NodeGroup) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="ingress",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=ROUTE_CONFIG_NAME),
        early_header_mutation_extensions=[_client_header_scrub()],
        local_reply_config=_local_replies(),
        http_filters=[
            # Holds the whole body before the first attempt so every retry can resend it;
            # the limit per route comes from the policy (BufferPerRoute).
            hcm_pb2.HttpFilter(name=BUFFER_FILTER, typed_config=_any(buffer_pb2.Buffer(
                max_request_bytes=wrappers_pb2.UInt32Value(value=Policy().max_request_bytes)))),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router",
                # Vertex need not see Envoy's own x-envoy-* request headers.
                typed_config=_any(router_pb2.Router(suppress_envoy_headers=True))),
        ],
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=_socket(group.listen_address, group.listen_port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_any(manager))])],
    )


# --------------------------------------------------------------------------- everything


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
            clusters.append(region_cluster(config, model, region))
            if _is_ip(config.regions[region].address):
                endpoints.append(load_assignment(config, model, region))
    return {
        SECRET_TYPE: [],
        CLUSTER_TYPE: clusters,
        ENDPOINT_TYPE: endpoints,
        LISTENER_TYPE: [listener(group)],
        ROUTE_TYPE: [route_configuration(config, group.region)],
    }


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False
