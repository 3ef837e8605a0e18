"""What every Envoy reports about the requests it serves: the JSON access log, and the
OpenTelemetry tracer with its collector cluster (config `observability:`)."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    extension_pb2,
    grpc_service_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.formatter.req_without_query.v3 import req_without_query_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from ..config import AccessLog, Tracing
from .names import HTTP_OPTIONS, METADATA_NAMESPACE
from .proto import _any, _duration, _is_ip, _socket, _struct

COLLECTOR_CLUSTER = "otel_collector"
# Where client authentication (resources/client_auth.py: jwt_authn, `payload_in_metadata: client`)
# leaves a verified token's claims; null when no token was verified.
CLIENT_METADATA = "envoy.filters.http.jwt_authn:client"

# One JSON object per request. Only these fields: no header values but the request id, no
# query string (it could carry a key), never a body or a token.
ACCESS_LOG_FIELDS = {
    "time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client": f"%DYNAMIC_METADATA({CLIENT_METADATA}:sub)%",  # a verified JWT's claims
    "client_email": f"%DYNAMIC_METADATA({CLIENT_METADATA}:email)%",
    "client_cert": "%DOWNSTREAM_PEER_URI_SAN%",  # a verified client certificate's URI SAN(s)
    "model": f"%METADATA(ROUTE:{METADATA_NAMESPACE}:model)%",
    "method": "%REQ(:METHOD)%",
    # The path the last attempt sent to Vertex (the client's when nothing was sent), no query:
    # it names the region, endpoint and verb (per-attempt filters rewrite :path in place).
    "path": "%REQ_WITHOUT_QUERY(:PATH)%",
    "route": "%ROUTE_NAME%",
    "region": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:region)%",  # the region that answered
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "upstream_host": "%UPSTREAM_HOST%",
    "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "ttfb_ms": "%RESPONSE_DURATION%",  # to the first byte from Vertex: a stream's time to first token
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
}
ACCESS_LOG_FORMATTERS = ("envoy.formatter.req_without_query",)


def access_logs(spec: AccessLog) -> list[accesslog_pb2.AccessLog]:
    if not spec.enabled:
        return []
    fmt = _format()
    if spec.path:
        sink = accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=_any(
            file_pb2.FileAccessLog(path=spec.path, log_format=fmt)))
    else:
        sink = accesslog_pb2.AccessLog(name="envoy.access_loggers.stdout", typed_config=_any(
            stream_pb2.StdoutAccessLog(log_format=fmt)))
    if spec.sample_percent < 100:
        sink.filter.CopyFrom(accesslog_pb2.AccessLogFilter(runtime_filter=accesslog_pb2.RuntimeFilter(
            runtime_key="vertex_gateway.access_log_sampling",
            percent_sampled=_fraction(spec.sample_percent),
            use_independent_randomness=True)))  # not tied to the request id: tracing samples by it
    return [sink]


def _format() -> substitution_format_string_pb2.SubstitutionFormatString:
    return substitution_format_string_pb2.SubstitutionFormatString(
        json_format=_struct(ACCESS_LOG_FIELDS),
        formatters=[extension_pb2.TypedExtensionConfig(
            name=ACCESS_LOG_FORMATTERS[0], typed_config=_any(req_without_query_pb2.ReqWithoutQuery()))])


def _fraction(percent: float) -> percent_pb2.FractionalPercent:
    # Millionths keep a fractional percentage (0.5%) exact enough.
    return percent_pb2.FractionalPercent(numerator=round(percent * 10_000),
                                         denominator=percent_pb2.FractionalPercent.MILLION)


def tracing(spec: Tracing) -> hcm_pb2.HttpConnectionManager.Tracing | None:
    """Spans for every request (and one per attempt), exported to the collector cluster.
    The tracer also writes `traceparent` into each attempt's request: Vertex sees the trace."""
    if spec.collector is None:
        return None
    provider = http_tracer_pb2.Tracing.Http(
        name="envoy.tracers.opentelemetry",
        typed_config=_any(opentelemetry_pb2.OpenTelemetryConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=COLLECTOR_CLUSTER),
                timeout=_duration(1.0)),
            service_name=spec.service_name)))
    tags = [custom_tag_pb2.CustomTag(tag="vertex.model", value=f"%METADATA(ROUTE:{METADATA_NAMESPACE}:model)%"),
            custom_tag_pb2.CustomTag(tag="vertex.region", value=f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:region)%"),
            custom_tag_pb2.CustomTag(tag="vertex.attempt", value="%UPSTREAM_REQUEST_ATTEMPT_COUNT%")]
    return hcm_pb2.HttpConnectionManager.Tracing(
        provider=provider,
        random_sampling=percent_pb2.Percent(value=spec.sample_percent),
        overall_sampling=percent_pb2.Percent(value=100.0),
        spawn_upstream_span=wrappers_pb2.BoolValue(value=True),  # a span per attempt: which region, how long, what it answered
        custom_tags=tags,
    )


def collector_cluster(spec: Tracing) -> cluster_pb2.Cluster | None:
    if spec.collector is None:
        return None
    host, _, port = spec.collector.rpartition(":")
    host = host.strip("[]")
    return cluster_pb2.Cluster(
        name=COLLECTOR_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if _is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=_duration(1.0),
        typed_extension_protocol_options={HTTP_OPTIONS: _any(http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions())))},
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=COLLECTOR_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[
                endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(
                    address=_socket(host, int(port))))])]))


__all__ = ["ACCESS_LOG_FIELDS", "CLIENT_METADATA", "COLLECTOR_CLUSTER", "access_logs",
           "collector_cluster", "tracing"]
