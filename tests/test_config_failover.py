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
    assert parse_config(BASE % ("", "")).policy_for("m", "us-central1").hedge is False


@pytest.mark.parametrize("region,model,where", [
    (", health_check: {kind: grpc}", "", "regions.us-central1.health_check.kind"),
    (", health_check: {interval: 0s}", "", "regions.us-central1.health_check.interval"),
    (", health_check: {unhealthy_threshold: 0}", "", "regions.us-central1.health_check.unhealthy_threshold"),
    (", health_check: {probe: yes}", "", "regions.us-central1.health_check.probe"),
    ("", ", policy: {hedge: 'yes'}", "models.m.policy.hedge"),
    ("", ", policy: {hedge: 1}", "models.m.policy.hedge"),
    ("", ", policy: {first_byte_timeout: 0s}", "models.m.policy.first_byte_timeout"),
])
def test_bad_values_are_reported_with_their_key_path(region, model, where):
    assert any(p.startswith(where + ":") for p in problems(region, model)), problems(region, model)
