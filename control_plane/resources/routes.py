"""The route configuration of a region's Envoys: every route in match order (each model's pins
and verbs, the OpenAI paths, /predict, the JSON 404), assembled from bytes serialized once per
build. One model's route itself is model_routes.py's."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.type.matcher.v3 import string_pb2

from .. import wire
from ..config import PUBLISHER_VERBS, VERBS, Policy, RegionConfig
from ..wire import Serialized
from ..xds_types import ROUTE_TYPE
from . import matches, openai, shapes
from .build import Build
from .clients import authorize_routes
from .model_routes import (
    json_response,
    limit_body,
    model_route,
    not_served,
    not_served_message,
    pin_refused,
    rewritten,
    route_rewrite,
    route_rewrite_fields,
)
from .names import (
    BUFFER_FILTER,
    METADATA_NAMESPACE,
    PIN_HEADER,
    ROUTE_CONFIG_NAME,
    attempts,
    members,
    pinnable,
)
from .proto import _any, _header, _regex


def route_configuration(build: Build, local_region: str, shaped: bool) -> Serialized:
    """The route configuration of this region's Envoys, assembled from its routes' bytes: most
    routes are shared by many regions' configurations, and serialized once per build.
    `shaped`: models alike but for names and ids are written from their shape (shapes.py)."""
    config = build.config
    opening, closing = _opening_routes(build), _closing_routes(build, local_region)
    if config.clients is None:
        # Each model's routes as bytes, once per (model, region); a reload that leaves the model
        # as it was takes them over (Build.inherit).
        entries = wire.Entries([
            *(_entry(build, r) for r in opening),
            *(build.memo_model(model, ("route_entries", local_region),
                               lambda model=model: _model_entries(build, model, local_region, shaped))
              for model in config.models),
            *(_entry(build, r) for r in closing)])
        limit = _body_limit(build, [*opening, *closing])
    else:  # per-identity variants of the routes (clients.py), whose refusals name grants' regions
        routes = authorize_routes(build, local_region, region_routes(build, local_region, closing))
        entries = wire.Entries(_entry(build, r) for r in routes)
        limit = max(DIRECT_BODY_LIMIT, *(len(r.direct_response.body.inline_string.encode()) for r in routes))
    virtual_host = build.memo(("virtual_host",), lambda: wire.Template(_virtual_host(), holes=("routes",)))
    template = build.memo(("route_configuration", limit), lambda: wire.Template(
        _route_configuration(limit), holes=("virtual_hosts",)))
    # One join for the whole configuration (6 MB at 1,000 models), already framed as the
    # snapshot sends it: the routes are not copied into the virtual host, that into the
    # configuration, and that into its `resources` entry.
    framed, data = wire.resource_entry(ROUTE_TYPE, template.pieces(virtual_hosts=virtual_host.pieces(routes=entries)))
    return Serialized(ROUTE_CONFIG_NAME, data, route_pb2.RouteConfiguration, entry=framed)


# Envoy's limit on a direct response's body unless the route configuration raises it; a body over
# it makes Envoy refuse (NACK) the whole route configuration.
DIRECT_BODY_LIMIT = 4096


def _route_configuration(body_limit: int) -> route_pb2.RouteConfiguration:
    route_configuration = route_pb2.RouteConfiguration(name=ROUTE_CONFIG_NAME)
    if body_limit > DIRECT_BODY_LIMIT:
        route_configuration.max_direct_response_body_size_bytes.value = body_limit
    return route_configuration


def _body_limit(build: Build, shared: list[route_components_pb2.Route]) -> int:
    """The largest direct response body of this region's routes (at least Envoy's default limit).
    The 404s and GET /v1/models name every model: 13 KB at 1,000 models. A model's own bodies (a
    503, a refused pin) name the model and at most every region: the longest of each is bounded."""
    config = build.config
    longest_model = max(config.models, key=len, default="")
    longest_region = max(config.regions, key=len, default="")
    bodies = [r.direct_response.body.inline_string for r in shared if r.HasField("direct_response")]
    bodies += [pin_refused(longest_model, list(config.regions)).body.inline_string,
               not_served(longest_model, longest_region).body.inline_string]
    return max(DIRECT_BODY_LIMIT, *(len(body.encode()) for body in bodies))


_ROUTES = route_components_pb2.VirtualHost.DESCRIPTOR.fields_by_name["routes"].number


def _model_entries(build: Build, model: str, local_region: str, shaped: bool) -> bytes:
    routes = shapes.shaped(build, model, local_region, "routes", _model_segment) if shaped else None
    if routes is None:
        routes = _model_segment(build, model, local_region)
    extra = route_rewrite_fields(build, model, local_region)
    if extra is None:
        return b"".join(_entry(build, r) for r in routes)
    # The routes are every region's; this region's rewrite goes into the action of the unpinned
    # ones, by joins around the bytes of each route's action (wire.Split).
    return b"".join([_entry(build, r) if _pinned(r) else wire.entry(_ROUTES, _split(build, r).with_fields(extra))
                     for r in routes])


def _pinned(route: route_components_pb2.Route | Serialized) -> bool:
    """A route of _model_segment that is no unpinned route of the model's: a pin or the refused
    pin (_pin_routes names them "pin:..."; the name is what a shaped route's bytes still tell)."""
    return route.name.startswith("pin:")


_ACTION = route_components_pb2.Route.DESCRIPTOR.fields_by_name["route"].number


def _split(build: Build, route: route_components_pb2.Route | Serialized) -> wire.Split:
    return build.memo(("route_split", id(route)), lambda: (route, wire.Split(wire.bytes_of(route), _ACTION)))[1]


def _entry(build: Build, route: route_components_pb2.Route | Serialized) -> bytes:
    """The route framed as one entry of VirtualHost.routes, once per build (the memo keeps the
    route alive, so its id stays its own)."""
    return build.memo(("route_entry", id(route)), lambda: (route, wire.entry(_ROUTES, wire.bytes_of(route))))[1]


def _virtual_host() -> route_components_pb2.VirtualHost:
    return route_components_pb2.VirtualHost(
        name="vertex",
        domains=["*"],
        include_attempt_count_in_response=True,
        response_headers_to_add=[_header("x-vertex-region", f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:region)%")],
    )


def region_routes(build: Build, local_region: str,
                  closing: list[route_components_pb2.Route] | None = None) -> list[route_components_pb2.Route]:
    """Every route of this region's Envoys, in match order (before clients' authorization);
    `closing`: _closing_routes() if the caller has them already."""
    return [*_opening_routes(build),
            *(route for model in build.config.models for route in _rewritten_segment(build, model, local_region)),
            *(closing if closing is not None else _closing_routes(build, local_region))]


def _rewritten_segment(build: Build, model: str, local_region: str) -> list[route_components_pb2.Route]:
    """_model_segment with this region's rewrite in its unpinned routes, as messages (what
    _model_entries writes as bytes)."""
    action = route_rewrite(build, model, local_region, matches.PIN_VERB)
    return [r if _pinned(r) else rewritten(r, action) for r in _model_segment(build, model, local_region)]


def _opening_routes(build: Build) -> list[route_components_pb2.Route]:
    """Before every model's routes: GET /v1/models, then any other method than POST gets the 404
    (every other path takes POST only). They match on the method first, so a POST passes them
    after comparing one header."""
    def compute() -> list[route_components_pb2.Route]:
        config = build.config
        not_post = route_components_pb2.HeaderMatcher(
            name=":method", string_match=string_pb2.StringMatcher(exact="POST"), invert_match=True)
        openai_not_found = _openai_not_found(config)
        openai_not_found.name = "openai:not-found:method"
        openai_not_found.match.headers.append(not_post)
        return [_model_list(config), openai_not_found,
                _not_found(config, "not-found:method", "no such path on this gateway: every path but GET /v1/models "
                                                       "takes POST", route_components_pb2.RouteMatch(
                                                           prefix="/", headers=[not_post]))]
    return build.memo(("opening_routes",), compute)


def _closing_routes(build: Build, local_region: str) -> list[route_components_pb2.Route]:
    """After every model's own routes: the OpenAI paths, /predict and the JSON 404."""
    return [*_openai_routes(build, local_region), _default_route(build, local_region),
            build.memo(("not_found",), lambda: _not_found(build.config, "not-found", "no such path on this gateway",
                                                          route_components_pb2.RouteMatch(prefix="/")))]


def _default_route(build: Build, local_region: str) -> route_components_pb2.Route:
    """POST /predict: the default model's predict."""
    config = build.config
    default = config.default_model
    return rewritten(model_route(build, default, local_region, "predict", route_components_pb2.RouteMatch(
        path="/predict"), hedged=config.policy_for(default, local_region).hedge),
        route_rewrite(build, default, local_region, matches.PIN_PREDICT))


def _model_segment(build: Build, model: str, local_region: str) -> tuple[route_components_pb2.Route, ...]:
    """A model's routes at an Envoy of local_region: pins first, then (when hedged) the hedged
    verbs, then every verb. They depend on the region only through these inputs (the key)."""
    config = build.config
    policy = config.policy_for(model, local_region)
    allowed = tuple(pinnable(build, model, local_region))
    chain_length = len(attempts(config, model, members(build, model, local_region)))
    key = ("model_segment", model, id(policy), allowed, chain_length, None if chain_length else local_region)

    def compute() -> tuple[route_components_pb2.Route, ...]:
        routes = _pin_routes(build, model, local_region)
        if policy.hedge:  # before the routes of all the verbs
            routes += [model_route(build, model, local_region, name, match, hedged=True)
                       for name, match in matches.hedged_matches(build, model)]
        routes += [model_route(build, model, local_region, name, match, streaming)
                   for name, match, streaming in matches.model_matches(build, model)]
        return tuple(routes)
    return build.memo(key, compute)


# What the JSON 404 lists (the OpenAI paths also under /v1beta1).
PATHS = ["POST /v1/models/{model}:{verb}", "POST /predict",
         "POST /v1/projects/{project}/locations/{region}/endpoints/{endpoint_id}:{verb}",
         "POST /v1/projects/{project}/locations/{region}/publishers/{publisher}/models/{model}:{verb}",
         "POST /v1/chat/completions", "POST /v1/models/{model}/chat/completions",
         "POST /v1/models/{model}/completions", "POST /v1/models/{model}/embeddings", "GET /v1/models"]


def _not_found(config: RegionConfig, name: str, message: str,
               match: route_components_pb2.RouteMatch) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name=name,
        match=match,
        direct_response=json_response(404, message, paths=PATHS, models=sorted(config.models),
                                      verbs=sorted(set(VERBS) | set(PUBLISHER_VERBS))),
        response_headers_to_add=[_header("content-type", "application/json")],
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))},
    )


def _pin_routes(build: Build, model: str, local_region: str) -> list[route_components_pb2.Route]:
    """`x-vertex-pin-region: R`: region R only, no failover (data residency, debugging). Only
    regions this Envoy would use for the model may be pinned; any other value gets a 400."""
    allowed = pinnable(build, model, local_region)
    # One route per region covers unary and streaming verbs alike: no whole-request timeout,
    # an idle timeout per try instead (what a hang looks like either way).
    routes = [model_route(build, model, local_region, f"pin:{model}@{region}" + ("" if kind == matches.PIN_VERB else
                                                                                  f":{kind}"),
                           match, streaming=True, pinned=region, pin_kind=kind)
              for region in allowed for kind, match in matches.pin_kinds(build, model, region)]
    routes.append(build.memo(("pin_refused", model, tuple(allowed)), lambda: route_components_pb2.Route(
        name=f"pin:{model}:refused", match=matches.pin_refused_match(build, model),
        direct_response=pin_refused(model, allowed),
        response_headers_to_add=[_header("content-type", "application/json")],
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))})))
    return routes


def _openai_routes(build: Build, local_region: str) -> list[route_components_pb2.Route]:
    """The OpenAI-compatible paths (resources/openai.py). Each model's routes name its own
    cluster, so failover and pinning are those of the Vertex-native paths. They match on the
    body's model (publisher models) and `"stream": true` (idle timeout instead of a whole-request
    timeout), which the body reader these routes enable has read. Endpoint models are pinned by
    their Vertex-native pin routes (_pin_routes), which also match their OpenAI paths."""
    config = build.config
    publisher = config.openai_models()
    endpoint_models = config.openai_endpoint_models()
    # The buffer filter takes its limit from the route matched before the body is read (the
    # unknown-model route), so every model on /v1/chat/completions shares the largest limit.
    chat_limit = max((config.policy_for(m, local_region).max_request_bytes for m in publisher.values()),
                     default=Policy().max_request_bytes)

    def reading_body(route: route_components_pb2.Route, model: bool) -> route_components_pb2.Route:
        route.typed_per_filter_config[openai.BODY_READER].CopyFrom(openai.read_body(model))
        if model:
            limit_body(route, chat_limit)
        return route

    def to(model: str, name: str, match: route_components_pb2.RouteMatch, streaming: bool, body_model: str | None,
           pinned: str | None = None) -> route_components_pb2.Route:
        route = route_components_pb2.Route()
        route.CopyFrom(model_route(build, model, local_region, name, match, streaming, pinned,  # memoized: shared
                                    pin_kind=matches.PIN_OPENAI))
        if not pinned and route.HasField("route"):
            route = rewritten(route, route_rewrite(build, model, local_region, matches.PIN_OPENAI))
        if route.HasField("direct_response"):  # no region serves it from here: a 503, OpenAI-shaped
            route.direct_response.CopyFrom(openai.error(
                503, not_served_message(model, local_region),
                "server_error", "model_not_served_here"))
            route.ClearField("response_headers_to_add")
        return reading_body(route, body_model is not None)

    routes: list[route_components_pb2.Route] = []
    for body_model, model in publisher.items():
        allowed = pinnable(build, model, local_region)
        routes += [to(model, f"openai:{model}@{region}", openai.match(openai.CHAT_PATH, body_model, pin={
            "name": PIN_HEADER, "string_match": string_pb2.StringMatcher(exact=region)}), True, body_model, region)
            for region in allowed]
        routes.append(reading_body(route_components_pb2.Route(
            name=f"openai:{model}:pin-refused",
            match=openai.match(openai.CHAT_PATH, body_model, pin={"name": PIN_HEADER, "present_match": True}),
            direct_response=openai.error(400, f"x-vertex-pin-region names a region that does not serve model "
                                              f"{body_model} from this gateway (allowed: {', '.join(allowed)})",
                                         code="region_not_allowed")), True))
    for name, path, body_model, model in [
            *[(f"openai:{m}", openai.CHAT_PATH, b, m) for b, m in publisher.items()],
            *[(f"openai-endpoint:{m}", openai.endpoint_model_path(m), None, m) for m in endpoint_models]]:
        routes.append(to(model, f"{name}:stream", openai.match(path, body_model, stream=True), True, body_model))
        routes.append(to(model, name, openai.match(path, body_model), False, body_model))
    routes.append(reading_body(route_components_pb2.Route(
        name="openai:unknown-model", match=openai.match(openai.CHAT_PATH),
        direct_response=openai.unknown_model(sorted(publisher))), True))
    routes.append(build.memo(("openai_not_found",), lambda: _openai_not_found(config)))
    return routes


def _model_list(config: RegionConfig) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name="openai:models", match=route_components_pb2.RouteMatch(
            safe_regex=_regex(f"^{openai.VERSION}/models$"), headers=[route_components_pb2.HeaderMatcher(
                name=":method", string_match=string_pb2.StringMatcher(exact="GET"))]),
        direct_response=openai.model_list(sorted(config.openai_models()), config.openai_endpoint_models()),
        response_headers_to_add=[_header("content-type", "application/json")],
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))})


def _openai_not_found(config: RegionConfig) -> route_components_pb2.Route:
    return route_components_pb2.Route(
        name="openai:not-found", match=route_components_pb2.RouteMatch(safe_regex=_regex(openai.OPENAI_PATHS)),
        direct_response=openai.error(
            404, "Unknown path %REQ(:METHOD)% %REQ(:PATH)% on this gateway: POST /v1/chat/completions (models: "
                 f"{', '.join(sorted(config.openai_models())) or 'none'}), or POST "
                 "/v1/models/{model}/chat/completions, /completions, /embeddings (models: "
                 f"{', '.join(config.openai_endpoint_models()) or 'none'}), or GET /v1/models",
            code="unknown_url"),
        typed_per_filter_config={BUFFER_FILTER: _any(buffer_pb2.BufferPerRoute(disabled=True))})
