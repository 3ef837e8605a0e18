"""Models alike but for their names and endpoint ids are written from their shape
(control_plane/resources/shapes.py): what every Envoy is served must be byte for byte what
the ordinary build serves, for every member of every shape."""

from __future__ import annotations

import copy
import functools
import logging

import pytest
import yaml
from envoy.config.route.v3 import route_components_pb2
from google.protobuf import wrappers_pb2

from control_plane.cache import SnapshotCache
from control_plane.config import parse_config
from control_plane.resources import Build, NodeGroup, build_serialized, shapes

from .configs import CONFIG

BASE = yaml.safe_load(CONFIG)
FAMILIES = {
    # failover over three regions; names with every character a name may have
    "fail": {"endpoints": {"us-central1": "90{i}1", "us-east4": "90{i}2", "europe-west4": "90{i}3"}},
    "wei": {"strategy": "weighted", "weights": {"us-central1": 3, "us-east4": 1},
            "endpoints": {"us-central1": "91{i}1", "us-east4": "91{i}2"}},
    "lr": {"strategy": "least_request", "endpoints": {"us-east4": "92{i}1", "europe-west4": "92{i}2"}},
    "hedged": {"policy": {"hedge": True, "per_try_timeout": "2s"},
               "endpoints": {"us-east4": "93{i}1", "us-central1": "93{i}2"}},
    "east": {"endpoints": {"us-east4": "94{i}1"}},  # one region: the alternation is the id itself
}
# Names with a '.' make shapes of their own (their clusters' stat names differ: names.stat_name):
# four or more of each kind per family.
NAMES = ["{f}.one", "{f}-two", "{f}_three", "{f}4", "{f}.5-x_y", "{f}-6_x", "{f}.7", "{f}.8.z", "{f}.9"]


def families(data: dict) -> dict:
    data = copy.deepcopy(data)
    data["regions"]["us-east4"]["health_check"] = {"kind": "http", "interval": "2s", "timeout": "1s"}
    for family, spec in FAMILIES.items():
        for i, name in enumerate(NAMES):
            model = copy.deepcopy(spec)
            model["endpoints"] = {r: v.format(i=i) for r, v in spec["endpoints"].items()}
            data["models"][name.format(f=family)] = model
    # Listed for the OpenAI paths: built the ordinary way, the rest of its family from the shape.
    data["openai"] = {"endpoint_models": ["fail.one"]}
    return data


def served(cache: SnapshotCache) -> dict:
    config = cache.config
    return {region: {(r.type_url, r.name): r.any_bytes
                     for r in cache.snapshot(NodeGroup(region, config.listener.address, config.listener.port)).all()}
            for region in config.vertex_regions}


def ordinary(text: str) -> SnapshotCache:
    return SnapshotCache(parse_config(text), builder=functools.partial(build_serialized, shaped=False))


VARIANTS = {
    "families": families(BASE),
    # Per-identity routes and region-restricted copies of the shaped clusters.
    "with clients": {**families(BASE), "clients": {
        "jwt": {"corp": {"issuer": "https://idp.example.com", "audiences": ["gw"],
                         "jwks_uri": "https://idp.example.com/jwks.json"}},
        "allow": {"eu": {"identities": ["a@example.com"], "models": ["fail-two", "lr4"], "regions": ["us-east4"]},
                  "all": {"identities": ["*"]}}}},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_envoy_is_served_what_the_ordinary_build_serves(variant):
    text = yaml.safe_dump(VARIANTS[variant], sort_keys=False)
    cache = SnapshotCache(parse_config(text))
    assert served(cache) == served(ordinary(text))
    shaped = shapes.shaped_models(cache.build)
    # churn (of the base config) has the east family's shape.
    assert shaped == {name.format(f=f) for f in FAMILIES for name in NAMES} - {"fail.one"} | {"churn"}


def test_a_global_edit_is_shaped_and_a_one_model_edit_is_built_the_ordinary_way():
    data = families(BASE)
    cache = SnapshotCache(parse_config(yaml.safe_dump(data, sort_keys=False)))
    served(cache)
    for change, shaped_after in [
            (lambda d: d.update(policy={"timeout": "31s"}), True),  # everything is rebuilt
            (lambda d: d["models"]["wei-two"].update(weights={"us-central1": 1, "us-east4": 1}), False)]:
        change(data)
        text = yaml.safe_dump(data, sort_keys=False)
        cache.set_config(parse_config(text))
        assert served(cache) == served(ordinary(text))
        assert bool(shapes.shaped_models(cache.build)) == shaped_after


def test_a_global_edit_takes_over_the_filled_resources_it_left_as_they_were():
    """A global edit rebuilds every shape's stand-in, but a stand-in resource whose bytes did not
    change (a route timeout leaves the endpoints alone) keeps its members' filled resources:
    the same objects, so the interner does not hash them again either. Also after an edit of
    one model, which is built without shapes."""
    data = families(BASE)
    cache = SnapshotCache(parse_config(yaml.safe_dump(data, sort_keys=False)))
    group = NodeGroup("us-east4", cache.config.listener.address, cache.config.listener.port)
    before = {(r.type_url, r.name): r.built for r in cache.snapshot(group).all()}
    # An edit of one model in between (built the ordinary way) keeps what the global edit takes over.
    data["models"]["wei-two"]["weights"] = {"us-central1": 1, "us-east4": 1}
    cache.set_config(parse_config(yaml.safe_dump(data, sort_keys=False)))
    data["policy"] = {"timeout": "31s"}
    text = yaml.safe_dump(data, sort_keys=False)
    cache.set_config(parse_config(text))
    after = {(r.type_url, r.name): r.built for r in cache.snapshot(group).all()}
    kept = {key for key in after if after[key] is before.get(key)}
    member_endpoints = {key for key in after if key[0].endswith("ClusterLoadAssignment")
                        and any(m in key[1] for m in ("lr4", "fail-two", "wei-one"))}  # wei lost a member
    assert member_endpoints and member_endpoints <= kept  # taken over
    assert ("type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "vertex") not in kept  # the edit
    assert served(cache) == served(ordinary(text))


def test_a_shape_whose_fill_differs_from_the_build_is_not_used(caplog):
    """A resource that depends on the model other than through its name and ids (here the
    name's length) cannot be written from the stand-in: the first member's check catches it."""
    build = Build(parse_config(yaml.safe_dump(families(BASE), sort_keys=False)))

    def odd(build, model, region):
        return (route_components_pb2.Route(name=f"{model}@{region}", request_body_buffer_limit=wrappers_pb2.UInt64Value(
            value=len(model))),)

    with caplog.at_level(logging.WARNING, logger="control_plane.resources.shapes"):
        assert shapes.shaped(build, "fail-two", "us-east4", "odd", odd) is None
    assert "differs" in caplog.text
    # The kinds that can be written from the shape still are.
    assert shapes.shaped(build, "fail-two", "us-east4", "routes", _segment) is not None


def _segment(build, model, region):
    from control_plane.resources.routes import _model_segment

    return _model_segment(build, model, region)


def test_fleet_avoidance_reorders_shaped_models_as_it_does_the_others():
    text = yaml.safe_dump(families(BASE), sort_keys=False)
    shaped, plain = SnapshotCache(parse_config(text)), ordinary(text)
    for cache in (shaped, plain):
        cache.set_avoided(frozenset({"us-central1"}))
    assert served(shaped) == served(plain)
    assert shaped.build.avoided == {"us-central1"} and shapes.shaped_models(shaped.build)


def test_a_resource_that_cannot_be_made_a_stencil_is_built_the_ordinary_way_in_its_region(caplog):
    """A token where filling could reorder the message (a map key) in one region only: that
    region's members are built the ordinary way, the other regions still from the shape."""
    build = Build(parse_config(yaml.safe_dump(families(BASE), sort_keys=False)))

    def keyed(build, model, region):
        route = route_components_pb2.Route(name=f"{model}@{region}")
        route.metadata.filter_metadata[model if region == "europe-west4" else "vertex"].update({"model": model})
        return (route,)

    with caplog.at_level(logging.WARNING, logger="control_plane.resources.shapes"):
        assert shapes.shaped(build, "fail-two", "us-east4", "keyed", keyed) is not None
        assert shapes.shaped(build, "fail-two", "europe-west4", "keyed", keyed) is None
        assert shapes.shaped(build, "fail_three", "europe-west4", "keyed", keyed) is None
    assert "map key" in caplog.text
