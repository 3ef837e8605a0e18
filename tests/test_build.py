"""What is built from a config lives in a build of it (control_plane/resources/build.py), never
on the config: the config is data only, a reload takes over what an edit left alone from the
build before, and fleet avoidance is a build of its own."""

from __future__ import annotations

import copy

import yaml
from google.protobuf.message import Message
from pydantic import BaseModel

from control_plane import wire
from control_plane.cache import SnapshotCache
from control_plane.config import parse_config
from control_plane.resources import CLUSTER_TYPE, Build, NodeGroup, build_serialized

from .configs import CONFIG

BASE = yaml.safe_load(CONFIG)


def config_of(data: dict):
    return parse_config(yaml.safe_dump(data, sort_keys=False))


def groups(config) -> list[NodeGroup]:
    return [NodeGroup(r, config.listener.address, config.listener.port) for r in config.vertex_regions]


def built_things_held(obj, seen=None) -> list:
    """Built resources (messages, serialized parts, templates, builds) reachable from a config
    through its fields, its private values and the containers they hold."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, (Message, wire.Serialized, wire.Template, wire.Stencil, Build)):
        return [obj]
    if isinstance(obj, BaseModel):
        children = [*obj.__dict__.values(), *(obj.__pydantic_private__ or {}).values()]
    elif isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    else:
        return []
    return [found for child in children for found in built_things_held(child, seen)]


def test_building_leaves_the_config_as_it_was_and_holds_nothing_built_on_it():
    config = parse_config(CONFIG)
    before = config.model_dump()
    build = Build(config)
    for group in groups(config):
        build_serialized(build, group)
    assert config.model_dump() == before and build.config is config
    assert built_things_held(config) == []


def test_two_builds_of_one_config_share_no_built_resource():
    config = parse_config(CONFIG)
    group = NodeGroup("us-central1", "0.0.0.0", 8080)
    first, second = (build_serialized(Build(config), group)[CLUSTER_TYPE] for _ in range(2))
    assert [wire.bytes_of(c) for c in first] == [wire.bytes_of(c) for c in second]
    assert not {id(c) for c in first} & {id(c) for c in second}


def _built(config) -> Build:
    build = Build(config)
    for group in groups(config):
        build_serialized(build, group)
    return build


def _taken_over(build: Build, previous: Build, region: str = "us-central1") -> set[str]:
    """The models whose resources `build` holds as `previous` built them, without building them."""
    taken = set()
    for model in build.config.models:
        rebuilt = []
        value = build.memo_model(model, ("resources", region), lambda: rebuilt.append(True))
        if not rebuilt:
            assert value is previous.memo_model(model, ("resources", region), list)
            taken.add(model)
    return taken


def test_inherit_takes_over_exactly_the_models_an_edit_left_alone():
    previous = _built(config_of(BASE))
    data = copy.deepcopy(BASE)
    data["models"]["housing"]["endpoints"]["us-east4"] = "999"
    data["models"].pop("churn")
    build = Build(config_of(data))
    unchanged = set(build.config.models) - {"housing"}
    assert build.inherit(previous) == len(unchanged) == build.models_taken_over
    assert _taken_over(build, previous) == unchanged


def test_inherit_takes_over_nothing_after_a_global_edit():
    previous = _built(config_of(BASE))
    data = copy.deepcopy(BASE)
    data["policy"] = {"timeout": "31s"}
    build = Build(config_of(data))
    assert build.inherit(previous) == 0 and build.models_taken_over == 0
    assert _taken_over(build, previous) == set()
    # Nor does a build of the same config that avoids some region (every failover order changes).
    avoiding = Build(previous.config, frozenset({"us-central1"}))
    assert avoiding.inherit(previous) == 0 and _taken_over(avoiding, previous) == set()


def _members(cluster) -> list[str]:
    from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2

    members = aggregate_pb2.ClusterConfig()
    cluster.cluster_type.typed_config.Unpack(members)
    return list(members.clusters)


def test_fleet_avoidance_is_a_build_of_its_own_with_its_own_orders_and_the_config_stays():
    config = parse_config(CONFIG)
    cache = SnapshotCache(config)
    file_build = cache.build
    file_order = _members(_cluster(cache))
    assert file_order[0] == "model/housing@us-central1"
    cache.set_avoided(frozenset({"us-central1"}))
    assert cache.config is config and cache.build is not file_build
    assert cache.build.avoided == {"us-central1"} and cache.build.config is config
    assert _members(_cluster(cache)) == ["model/housing@us-east4", "model/housing@europe-west4",
                                        "model/housing@us-central1"]
    cache.set_avoided(frozenset())  # back to the file's orders: the build made for them, kept
    assert cache.build is file_build and _members(_cluster(cache)) == file_order


def _cluster(cache: SnapshotCache, model: str = "housing"):
    (aggregate,) = [r.message for r in cache.select(NodeGroup("us-central1", "0.0.0.0", 8080), CLUSTER_TYPE)
                    if r.name == f"model/{model}"]
    return aggregate


def test_a_reload_retires_the_build_it_replaced_with_its_config():
    cache = SnapshotCache(config_of(BASE))
    retired = []
    cache.retire = retired.append
    old_config, old_build = cache.config, cache.build
    data = copy.deepcopy(BASE)
    data["policy"] = {"timeout": "31s"}
    cache.set_config(config_of(data))
    [(config, snapshots)] = retired
    assert config is old_config and snapshots.build is old_build and cache.build is not old_build


def test_the_credentials_a_region_needs_whatever_model_names_them():
    """Each region's Envoys are sent the token of every profile an attempt from there carries:
    the default, a region's own profile, and a profile that only the last model names."""
    data = copy.deepcopy(BASE)
    data["auth"] = {"credentials": "adc", "profiles": {"east": {"credentials": "adc"}, "late": {"credentials": "adc"}}}
    data["regions"]["us-east4"]["auth"] = "east"
    for i in range(10):
        data["models"][f"m{i}"] = {"endpoints": {"us-east4": str(900 + i)}}
    data["models"]["m9"]["auth"] = "late"
    cache = SnapshotCache(config_of(data))
    needed = {g.region: cache.credentials_needed(g) for g in groups(cache.config)}
    assert needed["us-central1"] == ["default", "east", "late"]  # fails over to us-east4
    assert needed["us-east4"] == ["default", "east", "late"]  # and its models to us-central1
    # Fails over to us-central1 only: the weighted model still spreads to us-east4, m9 is not reached.
    assert needed["europe-west4"] == ["default", "east"]
