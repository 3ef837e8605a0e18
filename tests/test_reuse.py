"""A reload takes over the resources of the models an edit left alone (Build.inherit),
and what it serves is exactly what a fresh build of the edited file would serve."""

from __future__ import annotations

import copy

import pytest
import yaml

from control_plane.cache import SnapshotCache
from control_plane.config import parse_config
from control_plane.resources import NodeGroup

from .configs import CONFIG

BASE = yaml.safe_load(CONFIG)


def edited(change) -> dict:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def _set(path: list, value):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return change


def _remove_model(name):
    return lambda data: data["models"].pop(name)


def _tiers(data):
    data["models"]["gemini"].update(strategy="failover", tiers={"us-central1": ["dedicated", "shared"]})


# (edit, whether the other models' resources may be taken over)
EDITS = {
    "one endpoint id": (_set(["models", "housing", "endpoints", "us-east4"], "999"), True),
    "a model's policy": (_set(["models", "churn", "policy"], {"timeout": "7s"}), True),
    "a model added": (_set(["models", "extra"], {"endpoints": {"us-central1": "1"}}), True),
    "a model removed": (_remove_model("churn"), True),
    "capacity tiers": (_tiers, True),
    "endpoints reordered": (lambda d: d["models"].update(spread={**d["models"]["spread"], "endpoints": dict(
        reversed(d["models"]["spread"]["endpoints"].items()))}), True),
    "regions reordered": (lambda d: d.update(regions=dict(reversed(d["regions"].items()))), False),
    "weights": (_set(["models", "spread", "weights"], {"us-central1": 1, "us-east4": 1, "europe-west4": 1}), True),
    "the default model": (lambda d: (d["models"]["housing"].pop("default"), d["models"]["churn"].update(
        default=True)), False),
    "global policy": (_set(["policy"], {"timeout": "31s", "outlier_detection": {"consecutive_5xx": 6}}), False),
    "a region's failover": (_set(["regions", "us-east4", "failover"], ["europe-west4", "us-central1"]), False),
    "a region's address": (_set(["regions", "us-central1", "address"], "10.128.0.11"), False),
    "the project": (_set(["project"], "p-456"), False),
}


def served(cache: SnapshotCache) -> dict:
    config = cache.config
    return {region: {(r.type_url, r.name): r.any_bytes
                     for r in cache.snapshot(NodeGroup(region, config.listener.address, config.listener.port)).all()}
            for region in config.vertex_regions}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_reload_serves_what_a_fresh_build_of_the_edited_file_serves(edit):
    change, reusable = EDITS[edit]
    text = yaml.safe_dump(edited(change), sort_keys=False)
    cache = SnapshotCache(parse_config(yaml.safe_dump(BASE, sort_keys=False)))
    served(cache)  # every region's group built, as with connected Envoys
    cache.set_config(parse_config(text))
    assert served(cache) == served(SnapshotCache(parse_config(text)))
    if reusable:
        assert cache.reused_models >= 2  # the models the edit left alone
    else:
        assert cache.reused_models == 0


def test_fleet_avoidance_is_an_edit_of_every_failover_order():
    cache = SnapshotCache(parse_config(CONFIG))
    cache.set_avoided(frozenset({"us-central1"}))
    assert cache.reused_models == 0
    fresh = SnapshotCache(parse_config(CONFIG))
    fresh.set_avoided(frozenset({"us-central1"}))
    assert served(cache) == served(fresh)


def test_unchanged_models_resources_are_the_same_objects_after_an_edit_of_another():
    cache = SnapshotCache(parse_config(yaml.safe_dump(BASE, sort_keys=False)))
    group = NodeGroup("us-central1", "0.0.0.0", 8080)
    before = {r.name: r for r in cache.snapshot(group).all()}
    cache.set_config(parse_config(yaml.safe_dump(edited(EDITS["one endpoint id"][0]), sort_keys=False)))
    after = {r.name: r for r in cache.snapshot(group).all()}
    assert after["model/churn"] is before["model/churn"]  # taken over, not rebuilt
    assert after["model/housing@us-east4"].version != before["model/housing@us-east4"].version


def test_a_reload_retires_the_generation_it_replaced_and_the_interner_keeps_only_what_is_served():
    cache = SnapshotCache(parse_config(yaml.safe_dump(BASE, sort_keys=False)))
    retired = []
    cache.retire = retired.append
    old_config = cache.config
    cache.set_config(parse_config(yaml.safe_dump(edited(EDITS["global policy"][0]), sort_keys=False)))
    [(config, snapshots)] = retired
    assert config is old_config and snapshots
    live = {(r.type_url, r.name, r.version) for s in cache._snapshots.values() for r in s.all()}
    assert set(cache._interner._by_key) == live  # the old policy's resources forgotten
