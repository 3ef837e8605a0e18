"""Client Status Discovery Service (CSDS) for the Envoys this control plane serves.

`envoy.service.status.v3.ClientStatusDiscoveryService`, answered from the server's own
records (status.ClientRegistry): per connected xDS stream, one ClientConfig with the
Envoy's Node and one GenericXdsConfig per (type, resource name) it was sent, carrying that
resource's version and whether the Envoy ACKed or NACKed the response that carried it.
(grpcio-csds would report this process's own gRPC xDS client, i.e. nothing.)

Node matchers' regexes are evaluated with RE2 (google-re2), never Python's backtracking `re`.

Resource contents are never included: the registry keeps names and versions only, and
leaving `xds_config` out means an access token (an SDS Secret) can never leak through CSDS.

Mapping from a type's state (status.SyncStatus) to the CSDS enums:

  SYNCED   (last sent version ACKed)   config_status SYNCED,   client_status ACKED
  STALE    (sent, not yet answered)    config_status STALE,    client_status REQUESTED
  NACKED   (last sent version NACKed)  config_status ERROR,    client_status NACKED  + error_state
  NOT_SENT (subscribed, nothing sent)  config_status NOT_SENT, client_status REQUESTED
           (only for names the Envoy asked for by name; a wildcard has no names to list)
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Iterable

import grpc
import re2
from envoy.admin.v3 import config_dump_shared_pb2
from envoy.service.status.v3 import csds_pb2
from envoy.type.matcher.v3 import node_pb2, string_pb2, value_pb2
from envoy.type.matcher.v3 import struct_pb2 as struct_matcher_pb2
from google.protobuf import struct_pb2, timestamp_pb2

from .status import ClientRegistry, ClientStream, Subscription, SyncStatus, printable
from .xds_types import push_rank

CSDS_SERVICE = "envoy.service.status.v3.ClientStatusDiscoveryService"

_CONFIG_STATUS = {
    SyncStatus.SYNCED: csds_pb2.SYNCED,
    SyncStatus.STALE: csds_pb2.STALE,
    SyncStatus.NACKED: csds_pb2.ERROR,
    SyncStatus.NOT_SENT: csds_pb2.NOT_SENT,
}
_CLIENT_STATUS = {
    SyncStatus.SYNCED: config_dump_shared_pb2.ACKED,
    SyncStatus.STALE: config_dump_shared_pb2.REQUESTED,
    SyncStatus.NACKED: config_dump_shared_pb2.NACKED,
    SyncStatus.NOT_SENT: config_dump_shared_pb2.REQUESTED,
}


class UnsupportedMatcher(ValueError):
    pass


class CsdsServer:
    def __init__(self, clients: ClientRegistry):
        self.clients = clients

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(CSDS_SERVICE, {
            "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
                self._fetch,
                request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                response_serializer=csds_pb2.ClientStatusResponse.SerializeToString),
            "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
                self._stream,
                request_deserializer=csds_pb2.ClientStatusRequest.FromString,
                response_serializer=csds_pb2.ClientStatusResponse.SerializeToString),
        })

    # ------------------------------------------------------------------ RPCs

    async def _fetch(self, request: csds_pb2.ClientStatusRequest,
                     context: grpc.aio.ServicerContext) -> csds_pb2.ClientStatusResponse:
        try:
            return self.status(request)
        except UnsupportedMatcher as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def _stream(self, requests: AsyncIterator[csds_pb2.ClientStatusRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[csds_pb2.ClientStatusResponse]:
        async for request in requests:
            try:
                response = self.status(request)
            except UnsupportedMatcher as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            yield response

    # ------------------------------------------------------------------ the answer

    def status(self, request: csds_pb2.ClientStatusRequest) -> csds_pb2.ClientStatusResponse:
        """One ClientConfig per xDS stream whose node matches any of the request's node
        matchers (OR, as the CSDS spec says); no matchers: every stream."""
        matchers = list(request.node_matchers)
        for matcher in matchers:
            _check_node_matcher(matcher)
        streams = [s for s in self.clients.streams() if not matchers or any(node_matches(m, s.node) for m in matchers)]
        return csds_pb2.ClientStatusResponse(config=[client_config(s) for s in streams])


def client_config(stream: ClientStream) -> csds_pb2.ClientConfig:
    config = csds_pb2.ClientConfig(node=stream.node)
    for state in sorted(stream.types.values(), key=lambda s: (push_rank(s.type_url), s.type_url)):
        config.generic_xds_configs.extend(generic_configs(state))
    return config


def generic_configs(state: Subscription) -> Iterable[csds_pb2.ClientConfig.GenericXdsConfig]:
    status = state.status
    updated = state.acked_at if status == SyncStatus.SYNCED else state.sent_at
    for name in sorted(state.sent):
        entry = csds_pb2.ClientConfig.GenericXdsConfig(
            type_url=state.type_url, name=name, version_info=state.sent[name].version,
            config_status=_CONFIG_STATUS[status], client_status=_CLIENT_STATUS[status])
        if updated is not None:
            entry.last_updated.CopyFrom(_timestamp(updated))
        if status == SyncStatus.NACKED:
            failure = config_dump_shared_pb2.UpdateFailureState(details=state.nack_error,
                                                                version_info=state.nacked_version)
            if state.sent_at is not None:
                failure.last_update_attempt.CopyFrom(_timestamp(state.sent_at))
            entry.error_state.CopyFrom(failure)
        yield entry
    # Names asked for explicitly that were never sent (not there yet, or nothing sent at all).
    if state.subscribed and state.names and not state.sent_version:
        for name in sorted(state.names - state.sent.keys()):
            yield csds_pb2.ClientConfig.GenericXdsConfig(
                type_url=state.type_url, name=name, config_status=csds_pb2.NOT_SENT,
                client_status=config_dump_shared_pb2.REQUESTED)


def _timestamp(ts: float) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(ts * 1e9))
    return out


# ---------------------------------------------------------------------- node matching


def node_matches(matcher: node_pb2.NodeMatcher, node) -> bool:
    """envoy.type.matcher.v3.NodeMatcher: the node id matcher (if set) and every metadata
    matcher must match."""
    if matcher.HasField("node_id") and not string_matches(matcher.node_id, node.id):
        return False
    return all(struct_matches(m, node.metadata) for m in matcher.node_metadatas)


def string_matches(matcher: string_pb2.StringMatcher, value: str) -> bool:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        return _re2(matcher.safe_regex.regex, matcher.ignore_case).fullmatch(value) is not None
    pattern = getattr(matcher, kind)
    if matcher.ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if kind == "exact":
        return value == pattern
    if kind == "prefix":
        return value.startswith(pattern)
    if kind == "suffix":
        return value.endswith(pattern)
    if kind == "contains":
        return pattern in value
    raise UnsupportedMatcher(f"unsupported string matcher {kind!r}")  # _check_node_matcher stops this earlier


def struct_matches(matcher: struct_matcher_pb2.StructMatcher, struct: struct_pb2.Struct) -> bool:
    value: struct_pb2.Value | None = None
    current = struct
    for segment in matcher.path:
        if current is None or segment.key not in current.fields:
            return False
        value = current.fields[segment.key]
        current = value.struct_value if value.WhichOneof("kind") == "struct_value" else None
    return value is not None and value_matches(matcher.value, value)


def value_matches(matcher: value_pb2.ValueMatcher, value: struct_pb2.Value) -> bool:
    kind, have = matcher.WhichOneof("match_pattern"), value.WhichOneof("kind")
    if kind == "present_match":
        return matcher.present_match == (have is not None)
    if kind == "null_match":
        return have == "null_value"
    if kind == "bool_match":
        return have == "bool_value" and value.bool_value == matcher.bool_match
    if kind == "string_match":
        return have == "string_value" and string_matches(matcher.string_match, value.string_value)
    if kind == "double_match":
        if have != "number_value":
            return False
        double = matcher.double_match
        if double.WhichOneof("match_pattern") == "exact":
            return value.number_value == double.exact
        return double.range.start <= value.number_value < double.range.end
    if kind == "list_match":
        return have == "list_value" and any(value_matches(matcher.list_match.one_of, item)
                                            for item in value.list_value.values)
    if kind == "or_match":
        return any(value_matches(m, value) for m in matcher.or_match.value_matchers)
    raise UnsupportedMatcher(f"unsupported value matcher {kind!r}")


def _check_node_matcher(matcher: node_pb2.NodeMatcher) -> None:
    """Refuse (INVALID_ARGUMENT) what cannot be evaluated, rather than silently match nothing."""
    if matcher.HasField("node_id"):
        _check_string_matcher(matcher.node_id, "node_matchers.node_id")
    for i, struct_matcher in enumerate(matcher.node_metadatas):
        if not struct_matcher.path:
            raise UnsupportedMatcher(f"node_matchers.node_metadatas[{i}]: empty path")
        _check_value_matcher(struct_matcher.value, f"node_matchers.node_metadatas[{i}].value")


def _check_string_matcher(matcher: string_pb2.StringMatcher, where: str) -> None:
    kind = matcher.WhichOneof("match_pattern")
    if kind not in ("exact", "prefix", "suffix", "contains", "safe_regex"):
        raise UnsupportedMatcher(f"{where}: unsupported string matcher {kind or '(none set)'}")
    if kind == "safe_regex":
        regex = matcher.safe_regex.regex
        if len(regex) > MAX_REGEX_LENGTH:
            raise UnsupportedMatcher(f"{where}: regex longer than {MAX_REGEX_LENGTH} characters")
        try:
            _re2(regex, matcher.ignore_case)
        except re2.error as exc:
            raise UnsupportedMatcher(f"{where}: bad regex {printable(regex, 256)!r}: {printable(str(exc), 256)}") from None


# Client-supplied regexes run with RE2 semantics, as Envoy's own safe_regex does: linear time,
# no backtracking, so `(a+)+$` cannot stall the event loop; the length and memory are capped.
MAX_REGEX_LENGTH = 1024


@functools.lru_cache(maxsize=256)
def _re2(regex: str, ignore_case: bool):
    options = re2.Options()
    options.case_sensitive = not ignore_case
    options.max_mem = 1 << 20
    options.log_errors = False
    return re2.compile(regex, options)


def _check_value_matcher(matcher: value_pb2.ValueMatcher, where: str) -> None:
    kind = matcher.WhichOneof("match_pattern")
    if kind is None:
        raise UnsupportedMatcher(f"{where}: no value matcher set")
    if kind == "string_match":
        _check_string_matcher(matcher.string_match, f"{where}.string_match")
    elif kind == "list_match":
        _check_value_matcher(matcher.list_match.one_of, f"{where}.list_match.one_of")
    elif kind == "or_match":
        for i, inner in enumerate(matcher.or_match.value_matchers):
            _check_value_matcher(inner, f"{where}.or_match[{i}]")
