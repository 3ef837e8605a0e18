"""One model's route: the retry policy, timeouts and body limit of its region chain, its
cluster, and for a pinned region the path and host rewrite; the JSON error bodies of its
direct responses. Assembled into the route configuration by routes.py."""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import wrappers_pb2

from .. import wire
from ..config import Policy, RegionConfig
from . import matches
from .build import Build
from .names import (
    BUFFER_FILTER,
    METADATA_NAMESPACE,
    PIN_HEADER,
    attempts,
    cluster_name,
    endpoint_path,
    first_region_cluster_name,
    members,
    region_cluster_name,
    route_region,
    upstream_path,
)
from .proto import _any, _duration, _header, _regex, _struct

# previous_hosts reselects at most this many times. Enough that a least-request pick (two random
# choices, the one with fewer requests kept) lands on an untried region: worst case, one untried
# region of k, is 1/k^2 per pick, so with k <= 10 a miss is below 1e-4 (measured: 0 of 2,000).
HOST_RESELECTIONS = 1000


# With a single region in reach, retries go back to it: after a real pause (jittered, doubling),
# not Envoy's default 25 ms, so a region shedding load is not hit again at once.
SAME_REGION_BACKOFF = (0.25, 2.0)


def _retry_policy(policy: Policy, attempts_available: int, by_priority: bool) -> route_components_pb2.RetryPolicy:
    # A retry goes to a region not yet tried; more retries than regions would revisit one. With one
    # region only (`failover: []`, or one serving region), retries stay there, with a backoff.
    num_retries = min(policy.num_retries, attempts_available - 1) if attempts_available > 1 else policy.num_retries
    retry = route_components_pb2.RetryPolicy(
        retry_on=",".join(policy.retry_on),
        retriable_status_codes=policy.retriable_status_codes,
        num_retries=wrappers_pb2.UInt32Value(value=num_retries),
        per_try_timeout=_duration(policy.per_try_timeout),
        retry_host_predicate=[route_components_pb2.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=_any(previous_hosts_pb2.PreviousHostsPredicate()))],
        host_selection_retry_max_attempts=3 if by_priority else HOST_RESELECTIONS,
    )
    if attempts_available == 1 and num_retries:
        retry.retry_back_off.base_interval.CopyFrom(_duration(SAME_REGION_BACKOFF[0]))
        retry.retry_back_off.max_interval.CopyFrom(_duration(SAME_REGION_BACKOFF[1]))
    if by_priority:  # failover and weighted: each region is a priority of an aggregate
        # Essential: without it a retry stays in the failing region.
        retry.retry_priority.CopyFrom(route_components_pb2.RetryPolicy.RetryPriority(
            name="envoy.retry_priorities.previous_priorities",
            typed_config=_any(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1))))
    return retry


def model_route(build: Build, model: str, local_region: str, name: str,
                 match: route_components_pb2.RouteMatch, streaming: bool = False,
                 pinned: str | None = None, hedged: bool = False,
                 pin_kind: str = matches.PIN_VERB) -> route_components_pb2.Route:
    """pin_kind: the client path `match` takes (a verb at the end, /predict, an OpenAI path), for
    a pinned region's rewrite. An unpinned route is the same for every region: the route
    region's rewrite (route_rewrite) is put on it by the route configuration."""
    # Most of a route does not depend on the Envoy's region: built once per build for all
    # regions that share its inputs (the name fixes the match; the policy object is shared).
    config = build.config
    chain_length = 1 if pinned else len(attempts(config, model, members(build, model, local_region)))
    key = ("route", model, name, streaming, pinned, hedged, id(config.policy_for(model, local_region)), chain_length,
           local_region if not chain_length else None, pin_kind if pinned else None)
    return build.memo(key, lambda: _build_model_route(build, model, local_region, name, match, streaming, pinned,
                                                      hedged, pin_kind))


def _build_model_route(build: Build, model: str, local_region: str, name: str,
                       match: route_components_pb2.RouteMatch, streaming: bool,
                       pinned: str | None, hedged: bool, pin_kind: str = matches.PIN_VERB) -> route_components_pb2.Route:
    config = build.config
    chain = [pinned] if pinned else members(build, model, local_region)
    if not chain:
        return route_components_pb2.Route(
            name=name, match=match, direct_response=not_served(model, local_region),
            response_headers_to_add=[_header("content-type", "application/json")])
    base_policy = config.policy_for(model, local_region)
    strategy = config.models[model].strategy
    route = route_components_pb2.Route()
    # Everything but the name, match and cluster is shared by many routes: copy it (in C).
    tried = len(chain) if pinned else len(attempts(config, model, chain))  # (region, tier) attempts
    route.CopyFrom(build.memo(("route_template", id(base_policy), tried, strategy, streaming, bool(pinned), hedged),
                              lambda: _route_template(base_policy, tried, strategy, streaming, bool(pinned),
                                                      hedged)))
    route.name = name
    route.match.CopyFrom(match)
    if pinned:
        route.route.cluster = region_cluster_name(model, pinned)
        # That region only: the path and host are rewritten here, not per attempt (its cluster
        # has no Lua rewrite: upstream.pinned_filters).
        route.route.regex_rewrite.CopyFrom(_pin_rewrite(config, model, pinned, pin_kind))
        route.route.host_rewrite_literal = config.host_of(pinned)
    elif strategy == "weighted":
        route.route.weighted_clusters.CopyFrom(_weighted_first_regions(config, model, chain))
    else:
        route.route.cluster = cluster_name(model)
    # The model, for the access log and trace spans (%METADATA(ROUTE:vertex:model)%).
    route.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(
        build.memo(("model_metadata", model), lambda: _struct({"model": model})))
    return route


def route_rewrite(build: Build, model: str, local_region: str, kind: str) -> route_components_pb2.RouteAction | None:
    """What an unpinned route of `model` adds to its action at an Envoy of local_region: the
    path and host of the route region (names.route_region), as a static route would write them,
    so that the first attempt sent there needs no per-attempt rewrite. None: no route region.
    `kind`: the client path the route takes (matches.PIN_*)."""
    region = route_region(build, model, local_region)
    if region is None:
        return None
    return build.memo(("route_rewrite", model, region, kind), lambda: route_components_pb2.RouteAction(
        regex_rewrite=_pin_rewrite(build.config, model, region, kind), host_rewrite_literal=build.config.host_of(region)))


def route_rewrite_fields(build: Build, model: str, local_region: str) -> tuple[tuple[int, bytes], ...] | None:
    """route_rewrite() of a verb route as encoded RouteAction fields, (field number, bytes) in
    field-number order, for wire.Split.with_fields: written directly, as one Envoy's share of a
    large build has thousands (the message and its serialization would be most of the cost)."""
    region = route_region(build, model, local_region)
    if region is None:
        return None

    def encode() -> tuple[tuple[int, bytes], ...]:
        pattern, substitution = _pin_rewrite_parts(build.config, model, region, matches.PIN_VERB)
        head = build.memo(("rewrite_pattern", pattern), lambda: regex_pb2.RegexMatchAndSubstitute(
            pattern=_regex(pattern)).SerializeToString(deterministic=True))
        return ((_HOST_REWRITE, wire.entry(_HOST_REWRITE, build.config.host_of(region).encode())),
                (_REGEX_REWRITE, wire.entry(_REGEX_REWRITE, head + wire.entry(_SUBSTITUTION, substitution.encode()))))
    return build.memo(("route_rewrite_fields", model, region), encode)


_ACTION_FIELDS = route_components_pb2.RouteAction.DESCRIPTOR.fields_by_name
_HOST_REWRITE, _REGEX_REWRITE = _ACTION_FIELDS["host_rewrite_literal"].number, _ACTION_FIELDS["regex_rewrite"].number
_SUBSTITUTION = regex_pb2.RegexMatchAndSubstitute.DESCRIPTOR.fields_by_name["substitution"].number


def rewritten(route: route_components_pb2.Route, action: route_components_pb2.RouteAction | None
              ) -> route_components_pb2.Route:
    """`route` with `action` (route_rewrite) merged into its action; as it is for None."""
    if action is None:
        return route
    out = route_components_pb2.Route()
    out.CopyFrom(route)
    out.route.MergeFrom(action)
    return out


def _pin_rewrite(config: RegionConfig, model: str, region: str, kind: str) -> regex_pb2.RegexMatchAndSubstitute:
    """:path of a request pinned to `region`, as the per-attempt rewrite makes it (upstream.py's
    Lua): the region's endpoint path with the client's verb (`predict` for /predict), or its
    OpenAI path with the client's operation and API version; a custom backend's path template
    with the verb. The query string is kept (a rewrite leaves it as it was)."""
    pattern, substitution = _pin_rewrite_parts(config, model, region, kind)
    return regex_pb2.RegexMatchAndSubstitute(pattern=_regex(pattern), substitution=substitution)


def _pin_rewrite_parts(config: RegionConfig, model: str, region: str, kind: str) -> tuple[str, str]:
    """(pattern, substitution) of _pin_rewrite."""
    verb_at_end = r"^.*:([^:/]+)$"  # the client's verb: what follows the path's last ':'

    if config.regions[region].custom:
        template = upstream_path(config, model, region).replace("\\", "\\\\")
        if kind == matches.PIN_VERB:
            return verb_at_end, template.replace("{verb}", r"\1")
        return r"^.*$", template.replace("{verb}", "predict")
    path = endpoint_path(config, model, region)
    if kind == matches.PIN_VERB:
        return verb_at_end, path + r":\1"
    if kind == matches.PIN_PREDICT:
        return r"^.*$", path + ":predict"
    # OpenAI: after the version the client used (v1 or v1beta1), the endpoint's OpenAI path (a
    # publisher model's being the region's endpoints/openapi), then the client's operation.
    if config.models[model].publisher_model:
        path = path[:path.index("/publishers/")] + "/endpoints/openapi"
    return (r"^/(v1|v1beta1)/(?:.*?/)??(chat/completions|completions|embeddings)$",
            r"/\1" + path.removeprefix("/v1") + r"/\2")


def _route_template(policy: Policy, attempts_available: int, strategy: str, streaming: bool,
                    pinned: bool, hedged: bool = False) -> route_components_pb2.Route:
    if pinned:  # that region only: no failover
        policy = policy.model_copy(update={"num_retries": 0})
    action = route_components_pb2.RouteAction(
        retry_policy=_retry_policy(policy, attempts_available, strategy != "least_request" or pinned))
    retry = action.retry_policy
    if streaming:
        # A stream may rightly last longer than any whole-response timeout; what must be caught is
        # an attempt that sends nothing (a hang before the first byte, or a stall mid-stream).
        action.timeout.CopyFrom(_duration(0))
        retry.ClearField("per_try_timeout")
        # Before the first byte a silent attempt goes to the next region; after it, a stream is
        # never retried (the client has part of an answer) and a stall this long ends it.
        first_byte = policy.first_byte_timeout if not pinned and policy.first_byte_timeout else policy.per_try_timeout
        retry.per_try_idle_timeout.CopyFrom(_duration(first_byte))
    else:
        action.timeout.CopyFrom(_duration(policy.timeout))
    if hedged:
        # The slow attempt keeps running while the next region is tried; the first good answer
        # wins and the other attempt is cancelled. num_retries caps the attempts either way.
        action.hedge_policy.hedge_on_per_try_timeout = True
    route = route_components_pb2.Route(route=action, request_headers_to_remove=[PIN_HEADER] if pinned else [])
    limit_body(route, policy.max_request_bytes)
    return route


def _weighted_first_regions(config: RegionConfig, model: str, regions: list[str]) -> route_components_pb2.WeightedCluster:
    """The weighted pick of the first attempt's region: one aggregate per region, that region first.
    Retries stay in the picked aggregate and move down its priorities (never back up)."""
    weights = config.models[model].weights
    return route_components_pb2.WeightedCluster(clusters=[route_components_pb2.WeightedCluster.ClusterWeight(
        name=first_region_cluster_name(model, r), weight=wrappers_pb2.UInt32Value(value=weights[r]))
        for r in regions])


def not_served(model: str, local_region: str) -> route_components_pb2.DirectResponseAction:
    return json_response(503, not_served_message(model, local_region))


def not_served_message(model: str, local_region: str) -> str:
    return f"model {model!r} is not served from region {local_region} or its failover regions"


def pin_refused(model: str, allowed: list[str]) -> route_components_pb2.DirectResponseAction:
    return json_response(400, f"x-vertex-pin-region names a region that does not serve model {model!r} from this "
                               "gateway", allowed_regions=allowed)


def json_response(status: int, message: str, **extra) -> route_components_pb2.DirectResponseAction:
    body = json.dumps({"error": {"code": status, "message": message, **extra}}, sort_keys=True)
    return route_components_pb2.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=body))


def limit_body(route: route_components_pb2.Route, limit: int) -> None:
    """A body must be buffered to be retried: the buffer filter holds up to `limit` bytes (413
    beyond), and the router keeps that much for the retry."""
    route.request_body_buffer_limit.value = limit
    route.typed_per_filter_config[BUFFER_FILTER].CopyFrom(_any(buffer_pb2.BufferPerRoute(
        buffer=buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=limit)))))
