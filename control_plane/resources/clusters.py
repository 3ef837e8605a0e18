"""Clusters and their endpoints: one per (model, region), plus the cluster a model's
route names (an aggregate in failover order, or one weighted/least-request spread)."""

from __future__ import annotations

from envoy.config.cluster.v3 import (
    circuit_breaker_pb2,
    cluster_pb2,
    outlier_detection_pb2,
)
from envoy.config.common.matcher.v3 import matcher_pb2
from envoy.config.core.v3 import (
    base_pb2,
    health_check_pb2,
    protocol_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import string_pb2
from envoy.type.v3 import http_pb2 as codec_pb2
from envoy.type.v3 import percent_pb2, range_pb2
from google.protobuf import any_pb2, wrappers_pb2

from .. import wire
from ..config import Policy, RegionConfig
from ..wire import Serialized, as_message
from .build import Build
from .names import (
    DEFAULT_CA_FILE,
    HTTP_OPTIONS,
    METADATA_NAMESPACE,
    SOCKET_MATCH,
    attempts,
    backend_secret_name,
    cluster_name,
    endpoint_path,
    failover_chain,
    first_region_cluster_name,
    fitted_prefix,
    members,
    name_stats,
    route_region,
    tier_cluster_name,
    upstream_path,
    weighted_order,
)
from .proto import (
    _ads,
    _any,
    _duration,
    _is_ip,
    _percent,
    _socket,
    _struct,
)
from .upstream import (
    Injection,
    pinned_filters,
    upstream_filters,
)


def injections(config: RegionConfig, model: str, regions: list[str]) -> tuple[list[str | Injection], bool]:
    """The credentials attempts to these regions carry (auth profiles by name, custom backends'
    own as Injections), and whether some attempt carries none."""
    profiles: set[str] = set()
    own: list[Injection] = []
    uncredentialed = False
    for region in regions:
        key = config.credential_for(model, region)
        if key is None:
            uncredentialed = True
        elif key.startswith("backend/"):
            credential = config.backend_credential(region)
            own.append(Injection(key, backend_secret_name(region),
                                 credential.header if credential.type == "header" else "authorization"))
        else:
            profiles.add(key)
    return [*sorted(profiles), *sorted(own, key=lambda i: i.key)], uncredentialed


def region_cluster(build: Build, model: str, region: str, tier: str | None = None) -> cluster_pb2.Cluster:
    """One region's Vertex endpoint for one model: TLS, outlier detection, endpoints via EDS.
    Under an aggregate its upstream filters never run; a pinned route names it directly (and
    rewrites the path itself: these filters only scrub and inject the credential).
    With a capacity tier, one attempt (region, tier): its own outlier detection, so a tier out
    of capacity (429) is skipped while the region's other tiers still serve."""
    config = build.config
    spec = config.regions[region]
    policy = config.policy_for(model, region)
    cluster = cluster_pb2.Cluster(
        name=tier_cluster_name(model, region, tier),
        connect_timeout=_duration(connect_timeout(policy)),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        outlier_detection=build.memo(("outlier", id(policy)), lambda: _outlier_detection(policy)),
        # Default 1 s would delay the effect of an ejection on host selection.
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(update_merge_window=_duration(0)),
        circuit_breakers=build.memo(("retry_budget",), _retry_budget),
        typed_extension_protocol_options={HTTP_OPTIONS: (_http_options(
            build, model, [region], policy, http2=spec.http2, pinned=True))},
    )
    if _is_ip(spec.address):
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(_ads())
    else:
        # EDS carries IPs only; a hostname (e.g. a PSC DNS name) is resolved by Envoy.
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.load_assignment.CopyFrom(load_assignment(config, model, region, tier))
    name_stats(cluster)
    if spec.tls:
        cluster.transport_socket.CopyFrom(_tls_socket(build, region))
    if spec.health_check is not None:
        cluster.health_checks.append(health_check(config, region))
        # A passing probe must not bring back a region outlier detection ejected: a region that
        # accepts connections but answers 5xx or hangs passes a connect probe.
        cluster.outlier_detection.successful_active_health_check_uneject_host.value = False
    return cluster


# The default connect timeout follows per_try_timeout within these bounds. Below 1 s, a burst of new
# TLS connections (a failover's first second: every hedged or retried attempt opens one to a region
# that had no traffic) timed out on a loaded machine, and each timeout counts toward ejecting a
# healthy region (measured: both regions ejected, requests sent to the hung one; docs/BENCHMARKS.md).
CONNECT_TIMEOUT_BOUNDS = (1.0, 5.0)


def connect_timeout(policy: Policy) -> float:
    """Envoy's connect_timeout (TCP + TLS handshake) for a cluster under this policy, in seconds."""
    if policy.connect_timeout is not None:
        return policy.connect_timeout
    low, high = CONNECT_TIMEOUT_BOUNDS
    return min(high, max(low, policy.per_try_timeout))


def health_check(config: RegionConfig, region: str) -> health_check_pb2.HealthCheck:
    """Active probes of one region's address: a TCP connect (+ the TLS handshake on a TLS cluster,
    whose transport socket the probe uses), or also a `GET /` any status below 500 passes."""
    spec = config.regions[region]
    hc = spec.health_check
    assert hc is not None
    out = health_check_pb2.HealthCheck(
        timeout=_duration(hc.timeout),
        interval=_duration(hc.interval),
        # Envoy probes clusters without traffic only every 60 s by default: a region held in
        # reserve (a failover target) must be known dead before the first request needs it.
        no_traffic_interval=_duration(hc.interval),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy_threshold),
        healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy_threshold),
        reuse_connection=wrappers_pb2.BoolValue(value=hc.kind == "http"),
    )
    if hc.kind == "connect":
        out.tcp_health_check.CopyFrom(health_check_pb2.HealthCheck.TcpHealthCheck())
    else:
        out.http_health_check.CopyFrom(health_check_pb2.HealthCheck.HttpHealthCheck(
            host=config.host_of(region), path="/",
            expected_statuses=[range_pb2.Int64Range(start=200, end=500)],
            codec_client_type=codec_pb2.HTTP2 if spec.http2 else codec_pb2.HTTP1))
    return out


def _tls_socket(build: Build, region: str) -> base_pb2.TransportSocket:
    return build.memo(("tls_socket", region), lambda: _build_tls_socket(build.config, region))


def _build_tls_socket(config: RegionConfig, region: str) -> base_pb2.TransportSocket:
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


def _http_options(build: Build, model: str, regions: list[str], policy: Policy,
                  http2: bool = False, pinned: bool = False, fitted: str | None = None) -> any_pb2.Any:
    """The per-attempt upstream filters for the cluster a route names, and 429 as an outlier
    error; packed, and built once per build for each distinct set of inputs. pinned: a region's
    own cluster, which only pinned routes name (they rewrite the path: no Lua). fitted: the routes
    naming this cluster rewrite for a region themselves (names.route_region, fitted_prefix)."""
    config = build.config
    credentials, uncredentialed = injections(config, model, regions)
    profiles = tuple(credentials)
    eject_on_429 = policy.outlier_detection.eject_on_429
    # its clusters also rewrite OpenAI-compatible paths
    openai = config.serves_openai(model) and not pinned
    return build.memo(("http_options", profiles, uncredentialed, eject_on_429, http2, openai, pinned, fitted),
                       lambda: _any(_build_http_options(profiles, eject_on_429, http2, uncredentialed, openai, pinned,
                                                        fitted)))


def _build_http_options(profiles: tuple[str | Injection, ...], eject_on_429: bool, http2: bool,
                        uncredentialed: bool = False, openai: bool = False, pinned: bool = False,
                        fitted: str | None = None) -> http_protocol_options_pb2.HttpProtocolOptions:
    explicit = http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions()) if http2 else \
        http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions())
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=explicit,
        http_filters=pinned_filters(list(profiles), uncredentialed) if pinned else
        upstream_filters(list(profiles), uncredentialed, openai, fitted))
    if eject_on_429:
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


def load_assignment(config: RegionConfig, model: str, region: str,
                    tier: str | None = None) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=tier_cluster_name(model, region, tier),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(region=region), lb_endpoints=[_lb_endpoint(config, model, region, tier=tier)])])


def _lb_endpoint(config: RegionConfig, model: str, region: str, weight: int = 0,
                 tier: str | None = None) -> endpoint_components_pb2.LbEndpoint:
    spec = config.regions[region]
    fields = {"region": region, "host": config.host_of(region)}
    if spec.custom:  # its whole path ({verb} filled in per attempt); no credential key: none is sent
        fields["upstream_path"] = upstream_path(config, model, region)
        credential = config.credential_for(model, region)
        if credential is not None:
            fields["credential"] = credential
    else:
        fields.update(endpoint_path=endpoint_path(config, model, region), credential=config.profile_for(model, region))
    if tier:  # the per-attempt filters set this attempt's tier headers from it
        fields["tier"] = tier
    metadata = {METADATA_NAMESPACE: _struct(fields)}
    if spec.tls:  # a spread cluster picks each region's TLS settings by this key
        metadata[SOCKET_MATCH] = _struct({"region": region})
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=_socket(spec.address, spec.port)),
        metadata=base_pb2.Metadata(filter_metadata=metadata))
    if spec.health_check is not None:  # an HTTP probe's Host, per region (a spread holds several)
        endpoint.endpoint.health_check_config.hostname = config.host_of(region)
    if weight:
        endpoint.load_balancing_weight.value = weight
    return endpoint


def spread_load_assignment(build: Build, model: str, local_region: str) -> endpoint_pb2.ClusterLoadAssignment:
    """Every member region's endpoint in one priority, weighted by the model's weights."""
    config = build.config
    spec = config.models[model]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name(model),
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
            _lb_endpoint(config, model, region, spec.weights.get(region, 1) if spec.weights else 1)
            for region in members(build, model, local_region)])])


def spread_cluster(build: Build, model: str, local_region: str) -> cluster_pb2.Cluster:
    """The cluster a least-request model's route names: all its regions in one priority.
    Retries move to a region not yet tried (previous_hosts: one host per region)."""
    config = build.config
    spec = config.models[model]
    regions = members(build, model, local_region)
    policy = config.policy_for(model, local_region)
    cluster = cluster_pb2.Cluster(
        name=cluster_name(model),
        connect_timeout=_duration(connect_timeout(policy)),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST if spec.strategy == "least_request"
        else cluster_pb2.Cluster.ROUND_ROBIN,
        outlier_detection=_outlier_detection(policy),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            update_merge_window=_duration(0),
            # With few hosts (one per region) the default 50% panic threshold would send traffic
            # to ejected regions as soon as half are out; never do that.
            healthy_panic_threshold=percent_pb2.Percent(value=0)),
        circuit_breakers=build.memo(("retry_budget",), _retry_budget),
        typed_extension_protocol_options={HTTP_OPTIONS: (_http_options(
            build, model, regions, policy, http2=all(config.regions[r].http2 for r in regions)))},
        transport_socket_matches=[cluster_pb2.Cluster.TransportSocketMatch(
            name=region, match=_struct({"region": region}), transport_socket=_tls_socket(build, region))
            for region in regions if config.regions[region].tls],
    )
    if all(_is_ip(config.regions[r].address) for r in regions):
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.eds_config.CopyFrom(_ads())
    else:
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        cluster.load_assignment.CopyFrom(spread_load_assignment(build, model, local_region))
    # One probe setting per cluster: the regions' must agree (each endpoint names its own Host).
    if regions and len({config.regions[r].health_check for r in regions}) == 1 \
            and config.regions[regions[0]].health_check is not None:
        cluster.health_checks.append(health_check(config, regions[0]))
        cluster.outlier_detection.successful_active_health_check_uneject_host.value = False
    return name_stats(cluster)


def aggregate_cluster(build: Build, model: str, local_region: str) -> Serialized:
    """The cluster a failover model's route names: its regions in failover order, local first."""
    return _aggregate(build, model, local_region, cluster_name(model),
                      failover_chain(build.config, model, local_region, build.avoided),
                      _fitted(build, route_region(build, model, local_region)))


def _fitted(build: Build, region: str | None) -> str | None:
    return None if region is None else fitted_prefix(build.config, region)


def first_region_cluster(build: Build, model: str, local_region: str, first: str) -> Serialized:
    """One of a weighted model's aggregates: `first`, then the other weighted regions. The route
    picks among them by weight (the first attempt's region); priorities order the retries."""
    return _aggregate(build, model, local_region, first_region_cluster_name(model, first),
                      weighted_order(build.config, model, first))


def _aggregate(build: Build, model: str, local_region: str, name: str, chain: list[str],
               fitted: str | None = None) -> Serialized:
    # Aggregates of one model differ in name and member order only: the rest is written once.
    config = build.config
    options = _http_options(build, model, chain, config.policy_for(model, local_region), fitted=fitted)
    template = build.memo(("aggregate_template", id(options)), lambda: wire.Template(cluster_pb2.Cluster(
        connect_timeout=_duration(5.0),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        circuit_breakers=build.memo(("retry_budget",), _retry_budget),
        # The wire protocol really comes from each region's cluster; these options carry the filters.
        typed_extension_protocol_options={HTTP_OPTIONS: options},
    ), holes=("name", "cluster_type")))
    members = aggregate_pb2.ClusterConfig(clusters=[tier_cluster_name(model, r, t) for r, t in attempts(config, model, chain)])
    cluster_type = _AGGREGATE_TYPE.fill(typed_config=wire.packed(_AGGREGATE_CONFIG_URL, members.SerializeToString()))
    cluster = Serialized(name, template.fill(name=name, cluster_type=cluster_type), cluster_pb2.Cluster)
    # A model name with a '.': its stat name differs (names.stat_name), a field the template lacks.
    return name_stats(as_message(cluster)) if "." in name else cluster


_AGGREGATE_TYPE = wire.Template(cluster_pb2.Cluster.CustomClusterType(name="envoy.clusters.aggregate"),
                                holes=("typed_config",))
_AGGREGATE_CONFIG_URL = "type.googleapis.com/" + aggregate_pb2.ClusterConfig.DESCRIPTOR.full_name
