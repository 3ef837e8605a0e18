"""The OpenAI-compatible front door: what Envoy needs to read the body's "model" and "stream",
match routes on them, and answer errors in OpenAI's shape.

  POST /v1/chat/completions            publisher models; the body names one ("google/gemini-2.0-flash")
  POST /v1/models/{m}/chat/completions endpoint models (also /completions, /embeddings)
  (and the same under /v1beta1)

The routes name the model's own cluster (aggregate or spread), so failover, pinning, outlier
detection and tokens are those of the Vertex-native paths; the per-attempt Lua (upstream.py)
turns the client's OpenAI path into that region's `.../endpoints/{id or openapi}/{operation}`.

The body is read by Envoy's json_to_metadata filter, off by default and enabled only on these
routes (other paths never pay for a JSON parse). It clears the route cache, so the route is
chosen again on the metadata it set: one route per configured model. Measured in 1.40:
metadata set by `on_missing`/`on_error` does not re-select the route, so a body with no model
or bad JSON lands on the unknown-model route, and a local-reply mapper turns that into a 400.
"""

from __future__ import annotations

import json

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import any_pb2, struct_pb2, wrappers_pb2

from .proto import _any, _re_escape, _regex, _struct

BODY_READER = "vertex.openai.body"  # the json_to_metadata filter's name in the HCM
NAMESPACE = "vertex.openai"  # dynamic metadata it writes: model, stream, missing, invalid
OPERATIONS = ("chat/completions", "completions", "embeddings")
VERSION = "/v1(?:beta1)?"
CHAT_PATH = f"^{VERSION}/chat/completions$"
# The resources of OpenAI's API: a path under one of them that this gateway does not serve gets
# OpenAI's 404 (`unknown_url`), so an SDK pointed here raises what it would at OpenAI. No ':'
# after them: /v1/models/{model}:{verb} is a Vertex path.
OPENAI_RESOURCES = ("chat", "completions", "embeddings", "models", "responses", "moderations", "images", "audio",
                    "files", "uploads", "batches", "fine_tuning", "assistants", "threads", "vector_stores",
                    "realtime", "evals", "containers", "conversations")
OPENAI_PATHS = f"^{VERSION}/(?:{'|'.join(OPENAI_RESOURCES)})(?:/[^:?]*)?$"
# :path when Envoy answers: the client's, or (after an attempt) the upstream path the per-attempt
# rewrite left, which ends in the same operation; with the query string.
_ANSWERED_PATHS = rf"^{VERSION}/(?:[^?]*/)?(?:chat/completions|completions|embeddings)(?:\?.*)?$"

_J2M = json_to_metadata_pb2.JsonToMetadata


def _rule(key: str, value_type: int, on_missing: str | None = None, on_error: str | None = None) -> _J2M.Rule:
    def flag(name: str) -> _J2M.KeyValuePair:
        return _J2M.KeyValuePair(metadata_namespace=NAMESPACE, key=name, value=struct_pb2.Value(bool_value=True))

    rule = _J2M.Rule(selectors=[_J2M.Selector(key=key)],
                     on_present=_J2M.KeyValuePair(metadata_namespace=NAMESPACE, key=key, type=value_type))
    if on_missing:
        rule.on_missing.CopyFrom(flag(on_missing))
    if on_error:
        rule.on_error.CopyFrom(flag(on_error))
    return rule


def _reader(model: bool) -> json_to_metadata_pb2.JsonToMetadata:
    rules = [_rule("stream", _J2M.PROTOBUF_VALUE)]
    if model:
        rules.insert(0, _rule("model", _J2M.STRING, on_missing="missing", on_error="invalid"))
    return _J2M(request_rules=_J2M.MatchRules(
        rules=rules,
        # Any content type: a body that is not JSON is "invalid" (a 400), not an unknown model.
        allow_empty_content_type=True, allow_content_types_regex=regex_pb2.RegexMatcher(regex=".*")))


def body_reader_filter() -> hcm_pb2.HttpFilter:
    """In the HCM after the buffer filter (which holds the whole body), off unless a route enables it."""
    return hcm_pb2.HttpFilter(name=BODY_READER, disabled=True, typed_config=_any(_reader(model=True)))


def read_body(model: bool = True) -> any_pb2.Any:
    """typed_per_filter_config value that enables the body reader on a route. For an endpoint
    model only `stream` matters (the container decides what "model" means)."""
    return _any(route_components_pb2.FilterConfig(config=_any(_reader(model))))


def _metadata_is(key: str, **value) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(filter=NAMESPACE, path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
                                        value=value_pb2.ValueMatcher(**value))


def match(path_regex: str, model: str | None = None, stream: bool = False,
          pin: dict | None = None) -> route_components_pb2.RouteMatch:
    """A request on path_regex (for the body's model, if given); stream: only `"stream": true`.
    pin: a HeaderMatcher's keywords for the pin header (name included)."""
    out = route_components_pb2.RouteMatch(safe_regex=_regex(path_regex))
    if model is not None:
        out.dynamic_metadata.append(_metadata_is("model", string_match=string_pb2.StringMatcher(exact=model)))
    if stream:
        out.dynamic_metadata.append(_metadata_is("stream", bool_match=True))
    if pin is not None:
        out.headers.append(route_components_pb2.HeaderMatcher(**pin))
    return out


def endpoint_model_path(model: str) -> str:
    return f"^{VERSION}/models/{_re_escape(model)}/(?:{'|'.join(OPERATIONS)})$"


def _error_format(message: str, kind: str, code: str | None) -> substitution_format_string_pb2.SubstitutionFormatString:
    # json_format escapes what a command inserts (a model name with quotes stays valid JSON).
    return substitution_format_string_pb2.SubstitutionFormatString(
        json_format=_struct({"error": {"message": message, "type": kind, "code": code}}),
        content_type="application/json")


def error(status: int, message: str, kind: str = "invalid_request_error",
          code: str | None = None) -> route_components_pb2.DirectResponseAction:
    """An OpenAI-shaped error body; message may use Envoy format commands."""
    return route_components_pb2.DirectResponseAction(status=status, body_format=_error_format(message, kind, code))


def unknown_model(known: list[str]) -> route_components_pb2.DirectResponseAction:
    shown = ", ".join(known) or "none"
    return error(404, f"The model `%DYNAMIC_METADATA({NAMESPACE}:model)%` does not exist or is not served by "
                      f"this gateway (models: {shown}).", code="model_not_found")


def model_list(publisher_models: list[str], endpoint_models: list[str]) -> route_components_pb2.DirectResponseAction:
    """GET /v1/models, as OpenAI lists models (client.models.list())."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": m.split("/", 1)[0]} for m in publisher_models]
    data += [{"id": m, "object": "model", "created": 0, "owned_by": "vertex-endpoint"} for m in endpoint_models]
    return route_components_pb2.DirectResponseAction(
        status=200, body=base_pb2.DataSource(inline_string=json.dumps({"object": "list", "data": data})))


def local_reply_mappers() -> list[hcm_pb2.ResponseMapper]:
    """Errors Envoy itself makes on OpenAI paths, in OpenAI's shape (so the SDK raises its usual
    exceptions). First in the list: the first mapper that matches wins."""
    def flagged(key: str) -> accesslog_pb2.AccessLogFilter:
        return accesslog_pb2.AccessLogFilter(metadata_filter=accesslog_pb2.MetadataFilter(
            matcher=_metadata_is(key, bool_match=True),
            match_if_key_not_found=wrappers_pb2.BoolValue(value=False)))  # the default would match

    def status_is(code: int) -> accesslog_pb2.AccessLogFilter:
        return accesslog_pb2.AccessLogFilter(status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=code, runtime_key="vertex_gateway.unused"))))

    def both(*filters: accesslog_pb2.AccessLogFilter) -> accesslog_pb2.AccessLogFilter:
        return accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=list(filters)))

    on_openai_path = accesslog_pb2.AccessLogFilter(header_filter=accesslog_pb2.HeaderFilter(
        header=route_components_pb2.HeaderMatcher(
            name=":path", string_match=string_pb2.StringMatcher(safe_regex=_regex(_ANSWERED_PATHS)))))
    any_flag = accesslog_pb2.AccessLogFilter(response_flag_filter=accesslog_pb2.ResponseFlagFilter())
    return [
        # The unknown-model route answers these two (see the module docstring).
        hcm_pb2.ResponseMapper(filter=both(flagged("invalid"), status_is(404)), status_code=wrappers_pb2.UInt32Value(value=400),
                               body_format_override=_error_format(
                                   "We could not parse the JSON body of your request.", "invalid_request_error",
                                   None)),
        hcm_pb2.ResponseMapper(filter=both(flagged("missing"), status_is(404)), status_code=wrappers_pb2.UInt32Value(value=400),
                               body_format_override=_error_format(
                                   "you must provide a model parameter", "invalid_request_error", None)),
        hcm_pb2.ResponseMapper(filter=both(on_openai_path, status_is(413)), body_format_override=_error_format(
            "request body larger than this gateway buffers for failover (policy max_request_bytes)",
            "invalid_request_error", "request_too_large")),
        # No healthy region, every region failed to connect or reset, timeouts.
        hcm_pb2.ResponseMapper(filter=both(on_openai_path, any_flag), body_format_override=_error_format(
            "%LOCAL_REPLY_BODY%", "server_error", "%RESPONSE_CODE_DETAILS%")),
    ]
