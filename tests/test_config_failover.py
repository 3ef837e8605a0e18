"""regions.yaml keys of issue 17 (health checks, hedging, first-byte deadline): strict and reported."""

from __future__ import annotations

import pytest

from control_plane.config import ConfigError, parse_config

BASE = """
project: p
regions:
  us-central1: {address: 10.0.0.1%s}
models:
  m: {default: true, endpoints: {us-central1: "1"}%s}
"""


def problems(region: str = "", model: str = "") -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE % (region, model))
    return [f"{p.path}: {p.message}" for p in exc.value.problems]


def test_the_new_keys_parse():
    config = parse_config(BASE % (", health_check: {kind: http, interval: 500ms}",
                                  ", policy: {hedge: true, first_byte_timeout: 2s}"))
    assert config.regions["us-central1"].health_check.interval == 0.5
    policy = config.policy_for("m", "us-central1")
    assert policy.hedge is True and policy.first_byte_timeout == 2.0
    assert policy.connect_timeout is None  # derived from per_try_timeout (resources/clusters.py)
    merged = parse_config(BASE % (", policy: {connect_timeout: 2s}", ", policy: {per_try_timeout: 1s}"))
    assert merged.policy_for("m", "us-central1").connect_timeout == 2.0  # a region's key, merged with the model's
    assert parse_config(BASE % ("", "")).policy_for("m", "us-central1").hedge is False


@pytest.mark.parametrize("region,model,where", [
    (", health_check: {kind: grpc}", "", "regions.us-central1.health_check.kind"),
    (", health_check: {interval: 0s}", "", "regions.us-central1.health_check.interval"),
    (", health_check: {unhealthy_threshold: 0}", "", "regions.us-central1.health_check.unhealthy_threshold"),
    (", health_check: {probe: yes}", "", "regions.us-central1.health_check.probe"),
    ("", ", policy: {hedge: 'yes'}", "models.m.policy.hedge"),
    ("", ", policy: {hedge: 1}", "models.m.policy.hedge"),
    ("", ", policy: {first_byte_timeout: 0s}", "models.m.policy.first_byte_timeout"),
    ("", ", policy: {connect_timeout: 0s}", "models.m.policy.connect_timeout"),
])
def test_bad_values_are_reported_with_their_key_path(region, model, where):
    assert any(p.startswith(where + ":") for p in problems(region, model)), problems(region, model)


TIERED = """
project: p
regions:
  us-central1: {address: 10.0.0.1, failover: [global]}
  global: {address: 10.0.0.9}
models:
  g:
    default: true
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1, global]
%s
"""


def test_tiers_and_the_global_location_parse():
    config = parse_config(TIERED % "    tiers: {us-central1: [dedicated, shared], global: [priority]}")
    assert config.models["g"].tiers["us-central1"] == ["dedicated", "shared"]
    assert config.host_of("global") == "aiplatform.googleapis.com"
    assert config.host_of("us-central1") == "us-central1-aiplatform.googleapis.com"


@pytest.mark.parametrize("tiers,where,message", [
    ("{us-east4: [shared]}", "models.g.tiers.us-east4", "does not serve this model"),
    ("{us-central1: [dedicated, dedicated]}", "models.g.tiers.us-central1", "listed twice"),
    ("{us-central1: [gold]}", "models.g.tiers.us-central1[0]", ""),
    ("{us-central1: []}", "models.g.tiers.us-central1", ""),
])
def test_bad_tiers_are_reported(tiers, where, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(TIERED % f"    tiers: {tiers}")
    found = [f"{p.path}: {p.message}" for p in exc.value.problems]
    assert any(f.startswith(where + ":") and message in f for f in found), found


def test_tiers_need_an_ordered_strategy():
    with pytest.raises(ConfigError) as exc:
        parse_config(TIERED % "    strategy: least_request\n    tiers: {us-central1: [shared]}")
    assert "models.g.tiers: tiers apply with strategy failover or weighted" in str(exc.value)


def test_validate_show_lists_each_regions_tiers():
    from control_plane.dryrun import plan

    config = parse_config(TIERED % "    tiers: {us-central1: [dedicated, shared]}")
    upstreams = {u.region: u for u in plan(config)["us-central1"].models["g"].upstreams}
    assert upstreams["us-central1"].tiers == ("dedicated", "shared")
    assert upstreams["global"].tiers == ("default",)  # a tiered model sets every attempt's tier
    assert upstreams["global"].host == "aiplatform.googleapis.com"
