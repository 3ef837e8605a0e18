"""Which requests a model's routes match: its client and Vertex-native paths, verbs, hedged
verbs and region pins, as regexes (RE2); once per build, shared by every region."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from ..config import PUBLISHER_VERBS, STREAMING_VERBS, VERBS
from . import openai
from .build import Build
from .names import PIN_HEADER
from .proto import _alternation, _re_escape, _regex

# Hedged on per_try_timeout when a model's policy says `hedge: true`: idempotent, non-streaming.
HEDGED_VERBS = frozenset({"predict", "rawPredict", "generateContent", "countTokens"})


def patterns(build: Build, model: str) -> tuple[str, str | None, tuple[str, ...]]:
    """The model's client path, its Vertex-native path (regexes; None when only custom backends
    serve it) and its verbs; once per build."""
    config = build.config
    def compute() -> tuple[str, str | None, tuple[str, ...]]:
        spec = config.models[model]
        model_path = f"/v1/models/{_re_escape(model)}"
        if spec.publisher_model:
            publisher, name = spec.publisher_model.split("/", 1)
            native = (f"/v1/projects/[^/]+/locations/[^/]+/publishers/{_re_escape(publisher)}"
                      f"/models/{_re_escape(name)}")
        else:
            # Vertex endpoint ids only: a custom backend's entry is a path, not an id a client could name.
            ids = sorted({v for r, v in spec.endpoints.items() if not config.regions[r].custom})
            native = f"/v1/projects/[^/]+/locations/[^/]+/endpoints/({_alternation(ids)})" if ids else None
        return model_path, native, PUBLISHER_VERBS if spec.publisher_model else VERBS
    return build.memo(("patterns", model), compute)


def model_matches(build: Build, model: str) -> list[tuple[str, route_components_pb2.RouteMatch, bool]]:
    """(route name, match, streaming) of the model's unpinned routes; the same for every region."""
    def compute() -> list[tuple[str, route_components_pb2.RouteMatch, bool]]:
        model_path, native, verbs = patterns(build, model)
        out = []
        for streaming in (False, True):
            group = [v for v in verbs if (v in STREAMING_VERBS) == streaming]
            suffix = ":stream" if streaming else ""
            verb_re = f":({_alternation(group)})$"
            out.append((f"model:{model}{suffix}", regex_match(f"^{model_path}{verb_re}"), streaming))
            if native:
                out.append((f"native:{model}{suffix}", regex_match(f"^{native}{verb_re}"), streaming))
        return out
    return build.memo(("matches", model), compute)


def hedged_matches(build: Build, model: str) -> list[tuple[str, route_components_pb2.RouteMatch]]:
    """(route name, match) of the model's hedged verbs, for a model whose policy says `hedge`."""
    def compute() -> list[tuple[str, route_components_pb2.RouteMatch]]:
        model_path, native, verbs = patterns(build, model)
        verb_re = f":({_alternation([v for v in verbs if v in HEDGED_VERBS])})$"
        return [(f"model:{model}:hedged", regex_match(f"^{model_path}{verb_re}")),
                (f"native:{model}:hedged", regex_match(f"^{native}{verb_re}"))]
    return build.memo(("hedged_matches", model), compute)


def pin_refused_match(build: Build, model: str) -> route_components_pb2.RouteMatch:
    """The model's paths with `x-vertex-pin-region` of any value (after the pins it allows)."""
    return build.memo(("pin_refused_match", model), lambda: route_components_pb2.RouteMatch(
        safe_regex=pin_paths(build, model),
        headers=[route_components_pb2.HeaderMatcher(name=PIN_HEADER, present_match=True)]))


# A pinned route per kind of path the model is asked on: each is rewritten its own way at the
# route (model_routes._pin_rewrite), no per-attempt filter.
PIN_VERB, PIN_PREDICT, PIN_OPENAI = "verb", "predict", "openai"


def pin_kinds(build: Build, model: str, region: str) -> list[tuple[str, route_components_pb2.RouteMatch]]:
    """(kind, match) of the model's paths pinned to `region`: its verbs, /predict (the default
    model), its OpenAI paths (an endpoint model served on them); together what pin_paths covers."""
    def compute() -> list[tuple[str, route_components_pb2.RouteMatch]]:
        config = build.config
        header = route_components_pb2.HeaderMatcher(name=PIN_HEADER, string_match=string_pb2.StringMatcher(exact=region))
        kinds = [(PIN_VERB, route_components_pb2.RouteMatch(safe_regex=build.memo(
            ("verb_paths", model), lambda: _regex(f"^{_verb_paths(build, model)}$")), headers=[header]))]
        if model == config.default_model:
            kinds.append((PIN_PREDICT, route_components_pb2.RouteMatch(path="/predict", headers=[header])))
        if model in config.openai_endpoint_models():
            kinds.append((PIN_OPENAI, route_components_pb2.RouteMatch(
                safe_regex=_regex(openai.endpoint_model_path(model)), headers=[header])))
        return kinds
    return build.memo(("pin_kinds", model, region), compute)


def _verb_paths(build: Build, model: str) -> str:
    model_path, native, verbs = patterns(build, model)
    return f"(?:{model_path}|{native}):({_alternation(list(verbs))})" if native else \
        f"{model_path}:({_alternation(list(verbs))})"


def pin_paths(build: Build, model: str) -> regex_pb2.RegexMatcher:
    """Every path of the model a pin header applies to, as one regex."""
    config = build.config
    paths = _verb_paths(build, model)
    if model in config.openai_endpoint_models():  # and its OpenAI paths (no pin routes of their own)
        paths = f"(?:{paths}|{openai.endpoint_model_path(model)[1:-1]})"
    if model == config.default_model:
        paths = f"(?:{paths}|/predict)"
    return _regex(f"^{paths}$")


def regex_match(pattern: str) -> route_components_pb2.RouteMatch:
    return route_components_pb2.RouteMatch(safe_regex=_regex(pattern))
