"""The client listener: HTTP connection manager, header scrubbing, JSON local replies."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import (
    base_pb2,
    substitution_format_string_pb2,
)
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import (
    header_mutation_pb2 as early_mutation_pb2,
)
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from ..config import Observability, Policy
from .names import (
    ATTEMPT_HEADER,
    BUFFER_FILTER,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    TEMP_HEADERS,
    NodeGroup,
)
from .observability import access_logs, tracing
from .openai import body_reader_filter, local_reply_mappers
from .proto import (
    _ads,
    _any,
    _socket,
    _struct,
)


def _client_header_scrub() -> core_extension_pb2.TypedExtensionConfig:
    """Before routing: drop what a client must not control. x-envoy-* would let it change
    retries and timeouts (x-envoy-max-retries, x-envoy-upstream-rq-timeout-ms...); the
    temporary x-vertex-* headers would let it pick the upstream path or host."""
    mutations = [mutation_rules_pb2.HeaderMutation(remove_on_match=mutation_rules_pb2.HeaderMutation.RemoveOnMatch(
        key_matcher=string_pb2.StringMatcher(prefix="x-envoy-")))]
    mutations += [mutation_rules_pb2.HeaderMutation(remove=name) for name in (*TEMP_HEADERS, ATTEMPT_HEADER)]
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
        *local_reply_mappers(),  # OpenAI paths answer in OpenAI's error shape
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


def listener(group: NodeGroup, observability: Observability | None = None) -> listener_pb2.Listener:
    observability = observability or Observability()
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
            # Reads "model" and "stream" from a whole body on the OpenAI routes only (off elsewhere).
            body_reader_filter(),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router",
                # Vertex need not see Envoy's own x-envoy-* request headers.
                typed_config=_any(router_pb2.Router(suppress_envoy_headers=True))),
        ],
        access_log=access_logs(observability.access_log),
    )
    traced = tracing(observability.tracing)
    if traced is not None:
        manager.tracing.CopyFrom(traced)
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=_socket(group.listen_address, group.listen_port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(
            name="envoy.filters.network.http_connection_manager", typed_config=_any(manager))])],
    )


