"""Resources assembled from pre-serialized parts (control_plane/wire.py) are byte for byte
what the whole message serializes to, so a version never depends on how it was built."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import regex_pb2

from control_plane import wire
from control_plane.config import parse_config
from control_plane.lab.jwt_issuer import Issuer
from control_plane.resources import ROUTE_TYPE, Build, NodeGroup, build_serialized
from control_plane.resources.clients import authorize_routes
from control_plane.resources.proto import _any, _struct
from control_plane.resources.routes import _virtual_host, region_routes
from control_plane.snapshot import Interner, response_entry
from control_plane.wire import Entries, Serialized, Template, entry

from .configs import CLIENTS, CONFIG


def whole_message(config, region: str) -> bytes:
    vhost = _virtual_host()
    build = Build(config)
    vhost.routes.extend(authorize_routes(build, region, region_routes(build, region)))
    return route_pb2.RouteConfiguration(name="vertex", virtual_hosts=[vhost]).SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def with_clients(tmp_path_factory):
    jwks = Issuer("https://idp.test").write_jwks(tmp_path_factory.mktemp("jwks") / "jwks.json")
    return parse_config(CONFIG + CLIENTS.replace("JWKS", jwks))


@pytest.mark.parametrize("clients", [False, True])
@pytest.mark.parametrize("region", ["us-central1", "us-east4", "europe-west4"])
def test_route_configuration_is_the_whole_message_byte_for_byte(region, clients, with_clients):
    config = with_clients if clients else parse_config(CONFIG)
    (built,) = build_serialized(Build(config), NodeGroup(region, "127.0.0.1", 8080))[ROUTE_TYPE]
    assert isinstance(built, Serialized)
    assert built.data == whole_message(config, region)
    assert built.parse().SerializeToString(deterministic=True) == built.data
    # Assembled already framed as a DiscoveryResponse entry, its bytes a view into that entry.
    assert built.entry == response_entry(ROUTE_TYPE, bytes(built.data))
    assert Interner().intern(ROUTE_TYPE, built).response_entry is built.entry


# Every kind of route the route-level rewrite meets: hedging, two auth profiles, a custom backend
# in the chain, a failover publisher model on the OpenAI paths, an OpenAI endpoint model, tiers,
# a custom-only and a one-region model, and a shape (five models alike).
RICH_CONFIG = """
project: p-1
policy: {hedge: true}
auth:
  credentials: adc
  profiles:
    b: {credentials: adc}
openai:
  endpoint_models: [llama]
regions:
  us-central1: {address: 10.0.0.1, failover: [us-east4, vllm]}
  us-east4: {address: 10.0.0.2, failover: [vllm, us-central1], auth: b}
  europe-west4: {address: 10.0.0.3, failover: [vllm, us-east4]}
  vllm:
    kind: custom
    address: 10.9.0.5
    port: 8000
    tls: false
    path: /v1/models/{model}:{verb}
    credential: {type: header, header: x-api-key, file: /etc/keys/vllm}
models:
  housing:
    default: true
    endpoints: {us-central1: "111", us-east4: "222", vllm: /v1/completions}
  llama:
    endpoints: {us-central1: "333", us-east4: "444", europe-west4: "445"}
  gemini:
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1, us-east4, vllm]
  tiered:
    publisher_model: google/gemini-2.5-pro
    regions: [us-central1, us-east4]
    tiers: {us-central1: [dedicated, shared]}
  only-custom:
    endpoints: {vllm: /v1/chat/completions}
  east-only:
    endpoints: {us-east4: "9"}
""" + "".join(f"""  shaped{i}:
    endpoints: {{us-central1: "7{i}1", us-east4: "7{i}2"}}
""" for i in range(5))



@pytest.mark.parametrize("avoided", [frozenset(), frozenset({"us-central1"}), frozenset({"us-east4", "vllm"})])
@pytest.mark.parametrize("region", ["us-central1", "us-east4", "europe-west4"])
def test_each_regions_route_rewrite_is_the_same_in_bytes_and_in_messages(region, avoided):
    """The route configuration joins each region's rewrite into shared routes' bytes (wire.Split);
    the messages (region_routes, used with `clients:`) merge it: the same configuration."""
    config = parse_config(RICH_CONFIG)
    build = Build(config, avoided)
    (built,) = build_serialized(build, NodeGroup(region, "127.0.0.1", 8080))[ROUTE_TYPE]
    vhost = _virtual_host()
    vhost.routes.extend(authorize_routes(build, region, region_routes(build, region)))
    assert built.data == route_pb2.RouteConfiguration(name="vertex", virtual_hosts=[vhost]).SerializeToString(
        deterministic=True)


def test_a_template_keeps_field_order_around_its_holes():
    vhost = route_components_pb2.VirtualHost(name="v", domains=["*"], include_attempt_count_in_response=True)
    routes = [route_components_pb2.Route(name=f"r{i}") for i in range(3)]
    data = Template(vhost, holes=("name", "routes")).fill(
        name="w", routes=Entries(entry(3, r.SerializeToString()) for r in routes))
    whole = route_components_pb2.VirtualHost()
    whole.CopyFrom(vhost)
    whole.name = "w"
    whole.routes.extend(routes)
    assert data == whole.SerializeToString(deterministic=True)


def test_a_template_nests_another_templates_pieces_as_a_sub_message():
    vhost = route_components_pb2.VirtualHost(name="v", domains=["*"])
    routes = [route_components_pb2.Route(name="r" * 200 * i) for i in range(3)]  # lengths past one varint byte
    pieces = Template(vhost, holes=("routes",)).pieces(routes=Entries(entry(3, r.SerializeToString()) for r in routes))
    configuration = route_pb2.RouteConfiguration(name="vertex", max_direct_response_body_size_bytes={"value": 9})
    data = Template(configuration, holes=("virtual_hosts",)).fill(virtual_hosts=pieces)
    vhost.routes.extend(routes)
    configuration.virtual_hosts.append(vhost)
    assert data == configuration.SerializeToString(deterministic=True)


REGEX_FIELDS = frozenset({"envoy.type.matcher.v3.RegexMatcher.regex"})


def _route(model: str, escaped: str) -> route_components_pb2.Route:
    route = route_components_pb2.Route(name=f"pin:{model}@us-east4", match=route_components_pb2.RouteMatch(
        safe_regex=regex_pb2.RegexMatcher(regex=f"^/v1/models/{escaped}:(predict)$")))
    route.route.cluster = f"model/{model}"
    route.metadata.filter_metadata["vertex"].CopyFrom(_struct({"model": model}))  # a token four messages down
    route.typed_per_filter_config["inner"].CopyFrom(_any(route_components_pb2.Route(name=model)))  # inside an Any
    return route


def test_a_stencil_writes_what_the_message_built_with_other_values_serializes_to():
    token = "zqtokenzq"
    stencil = wire.Stencil(_route(token, token).SerializeToString(deterministic=True),
                           route_components_pb2.Route.DESCRIPTOR, wire.tokens_pattern([token]), REGEX_FIELDS)
    for model, escaped in [("m", "m"), ("my-model.v2", r"my\-model\.v2"), ("x" * 300, "x" * 300)]:
        assert stencil.fill({token: (model, escaped)}) == _route(model, escaped).SerializeToString(deterministic=True)


def test_a_stencil_refuses_a_token_in_a_map_key():
    """Filling could change the order of map entries, which deterministic output sorts."""
    message = route_components_pb2.Route()
    message.metadata.filter_metadata["zqtokenzq"].CopyFrom(_struct({"a": "b"}))
    with pytest.raises(wire.StencilError):
        wire.Stencil(message.SerializeToString(deterministic=True), route_components_pb2.Route.DESCRIPTOR,
                     wire.tokens_pattern(["zqtokenzq"]), REGEX_FIELDS)


def test_a_split_message_takes_fields_into_its_sub_message_as_the_merged_message_serializes():
    route = route_components_pb2.Route(name="model:m", match=route_components_pb2.RouteMatch(prefix="/v1/"))
    route.route.cluster = "model/m"
    route.route.timeout.seconds = 30
    route.route.retry_policy.retry_on = "5xx"
    route.route.hedge_policy.hedge_on_per_try_timeout = True
    route.request_headers_to_remove.append("x-a")
    added = route_components_pb2.RouteAction(
        host_rewrite_literal="us-east4-aiplatform.googleapis.com",
        regex_rewrite=regex_pb2.RegexMatchAndSubstitute(pattern=regex_pb2.RegexMatcher(regex="^.*:(\\w+)$"),
                                                        substitution="/v1/projects/p/locations/us-east4/endpoints/2:\\1"))
    alone = [(f.number, route_components_pb2.RouteAction(**{f.name: v}).SerializeToString(deterministic=True))
             for f, v in added.ListFields()]
    merged = route_components_pb2.Route()
    merged.CopyFrom(route)
    merged.route.MergeFrom(added)
    split = wire.Split(route.SerializeToString(deterministic=True), 2)
    for _ in range(2):  # the second time from the cut kept for these field numbers
        assert split.with_fields(tuple(alone)) == merged.SerializeToString(deterministic=True)
    with pytest.raises(wire.StencilError):  # the action has a cluster already
        split.with_fields(((1, b"\x0a\x01x"),))
    with pytest.raises(wire.StencilError):
        wire.Split(route_components_pb2.Route(name="no action").SerializeToString(), 2)
