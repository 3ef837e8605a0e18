"""regions.yaml's values (SPEC "Rules"): durations, numbers in range, Envoy's bounds and strict types.

Pure and fast: no network, no Envoy. Each config is written inline (to tmp_path) from a small
valid base that a test modifies; every rejection asserts the file, the key path, the meaningful
part of the message and, where the key exists in the file, its line (tests/config_problems.py).
"""

from __future__ import annotations

import pytest

from control_plane.config import parse_duration

from .config_problems import expect, load, set_key
from .configs import BASE_YAML, base

# ---------------------------------------------------------------- durations


@pytest.mark.parametrize("value, seconds", [
    ("500ms", 0.5), ("20s", 20.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5), ("0s", 0.0),
    (30, 30.0), (2.5, 2.5), (0, 0.0), (" 20s ", 20.0),
])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [
    "20", "20 sec", "20sec", "abc", "", "1d", "-1s", -1, True, None, "s", float("inf"), float("nan"), "1e3s",
])
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(value)


def test_durations_in_config_become_seconds(tmp_path):
    data = base()
    data["policy"] = {"timeout": "5m", "per_try_timeout": "500ms",
                      "outlier_detection": {"interval": "1h", "base_ejection_time": 45}}
    data["auth"] = {"refresh_margin": "20s"}
    config = load(tmp_path, data)
    assert config.policy.timeout == 300.0
    assert config.policy.per_try_timeout == 0.5
    assert config.policy.outlier_detection.interval == 3600.0
    assert config.policy.outlier_detection.base_ejection_time == 45.0
    assert config.auth.refresh_margin == 20.0


@pytest.mark.parametrize("keys, value, fragment", [
    (("policy", "timeout"), "5 minutes", "bad duration '5 minutes'"),
    (("policy", "per_try_timeout"), "-2s", "bad duration '-2s'"),
    (("policy", "timeout"), -3, "must not be negative"),
    (("policy", "outlier_detection", "interval"), "often", "bad duration 'often'"),
    (("policy", "outlier_detection", "base_ejection_time"), "30", "bad duration '30'"),
    (("regions", "us-east4", "policy", "per_try_timeout"), "2 s", "bad duration '2 s'"),
    (("models", "housing", "policy", "timeout"), "1d", "bad duration '1d'"),
    (("auth", "refresh_margin"), "five minutes", "bad duration 'five minutes'"),
    (("policy", "timeout"), None, "bad duration null:"),  # as written in YAML, not Python's None
    (("policy", "per_try_timeout"), True, "bad duration true:"),
], ids=lambda v: ".".join(v) if isinstance(v, tuple) else None)
def test_bad_duration(tmp_path, keys, value, fragment):
    data = base()
    set_key(*keys, value=value)(data)
    expect(tmp_path, data, ".".join(keys), fragment, line=f"{keys[-1]}:", only=True)


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_non_finite_duration(tmp_path, value):
    text = BASE_YAML + f"policy:\n  timeout: {value}\n"
    expect(tmp_path, text, "policy.timeout", "bad duration", "finite", line="timeout:", only=True)


@pytest.mark.parametrize("keys", [
    ("policy", "per_try_timeout"), ("policy", "outlier_detection", "interval"),
    ("policy", "outlier_detection", "base_ejection_time"), ("regions", "us-east4", "policy", "per_try_timeout"),
])
def test_zero_duration_where_envoy_needs_positive(tmp_path, keys):
    data = base()
    set_key(*keys, value="0s")(data)
    expect(tmp_path, data, ".".join(keys), "must be more than 0", line=f"{keys[-1]}:", only=True)


def test_largest_duration_is_accepted(tmp_path):
    data = base()
    data["policy"] = {"timeout": "2562047h"}  # 292 years: Envoy's range is int64 milliseconds
    assert load(tmp_path, data).policy.timeout == 2_562_047 * 3600


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize("port, fragment", [
    (0, "must be at least 1"), (-1, "must be at least 1"),
    (65536, "must be at most 65535"), ("https", "expected a whole number"),
])
def test_port_out_of_range(tmp_path, port, fragment):
    data = base()
    data["regions"]["us-east4"]["port"] = port
    expect(tmp_path, data, "regions.us-east4.port", fragment, repr(port), line="port:", nth=2, only=True)


@pytest.mark.parametrize("port", [1, 443, 65535])
def test_port_in_range(tmp_path, port):
    data = base()
    data["regions"]["us-east4"]["port"] = port
    assert load(tmp_path, data).regions["us-east4"].port == port


@pytest.mark.parametrize("port", [0, 70000])
def test_listener_port_out_of_range(tmp_path, port):
    data = base()
    data["listener"]["port"] = port
    expect(tmp_path, data, "listener.port", "must be at", line="port:", only=True)


@pytest.mark.parametrize("keys", [("policy",), ("regions", "us-east4", "policy"), ("models", "housing", "policy")],
                         ids=["defaults", "region", "model"])
@pytest.mark.parametrize("value, fragment", [(-1, "must be at least 0"), (11, "must be at most 10")])
def test_num_retries_out_of_range(tmp_path, keys, value, fragment):
    data = base()
    set_key(*keys, "num_retries", value=value)(data)
    expect(tmp_path, data, ".".join(keys + ("num_retries",)), fragment, f"(got {value})",
           line="num_retries:", only=True)


@pytest.mark.parametrize("value", [0, 10])
def test_num_retries_in_range(tmp_path, value):
    data = base()
    data["policy"] = {"num_retries": value}
    assert load(tmp_path, data).policy.num_retries == value


@pytest.mark.parametrize("keys", [("policy",), ("regions", "us-east4", "policy"), ("models", "housing", "policy")],
                         ids=["defaults", "region", "model"])
def test_unknown_retry_on(tmp_path, keys):
    data = base()
    set_key(*keys, "retry_on", value=["5xx", "timeout"])(data)
    problem = expect(tmp_path, data, ".".join(keys + ("retry_on",)), "unknown retry_on 'timeout'",
                     line="retry_on:", only=True)
    assert "connect-failure" in problem.message  # lists what is allowed


def test_known_retry_on_values(tmp_path):
    values = ["5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes",
              "refused-stream", "reset-before-request", "envoy-ratelimited", "http3-post-connect-failure"]
    data = base()
    data["policy"] = {"retry_on": values}
    assert load(tmp_path, data).policy.retry_on == values


@pytest.mark.parametrize("keys", [("policy",), ("models", "housing", "policy")], ids=["defaults", "model"])
@pytest.mark.parametrize("code", [42, 600])
def test_retriable_status_code_out_of_range(tmp_path, keys, code):
    data = base()
    set_key(*keys, "retriable_status_codes", value=[429, code])(data)
    expect(tmp_path, data, ".".join(keys + ("retriable_status_codes",)) + "[1]", f"(got {code})",
           line=f"- {code}", nth=2 if code == 42 else 1, only=True)  # "- 42" also matches "- 429"


@pytest.mark.parametrize("keys, value, fragment", [
    (("policy", "max_request_bytes"), 10, "must be at least 1024"),
    (("policy", "outlier_detection", "max_ejection_percent"), 101, "must be at most 100"),
    (("policy", "outlier_detection", "consecutive_5xx"), 0, "must be at least 1"),
    (("regions", "us-east4", "tls"), "maybe", "expected true or false"),
])
def test_other_bounds(tmp_path, keys, value, fragment):
    data = base()
    set_key(*keys, value=value)(data)
    expect(tmp_path, data, ".".join(keys), fragment, line=f"{keys[-1]}:", only=True)


# ---------------------------------------------------------------- Envoy's bounds, strict types


@pytest.mark.parametrize("keys, value, path, fragment", [
    (("policy", "per_try_timeout"), "99999999999999h", "policy.per_try_timeout", "beyond Envoy's limit"),
    (("policy", "timeout"), 9_223_372_037, "policy.timeout", "beyond Envoy's limit"),
    (("policy", "outlier_detection", "consecutive_5xx"), 1_000_000_000_000,
     "policy.outlier_detection.consecutive_5xx", "must be at most 4294967295"),
    (("policy", "max_request_bytes"), 5_000_000_000, "policy.max_request_bytes", "must be at most 4294967295"),
    (("listener", "port"), True, "listener.port", "expected a whole number (got true)"),
    (("regions", "us-east4", "port"), "443", "regions.us-east4.port", "expected a whole number (got '443')"),
    (("policy", "num_retries"), "2", "policy.num_retries", "expected a whole number"),
    (("policy", "num_retries"), 1.5, "policy.num_retries", "expected a whole number"),
    (("regions", "us-east4", "tls"), 1, "regions.us-east4.tls", "expected true or false (got 1)"),
    (("regions", "us-east4", "tls"), "yes", "regions.us-east4.tls", "expected true or false (got 'yes')"),
    (("regions", "us-east4", "host"), "vertex.example.com\r\nx-evil: 1", "regions.us-east4.host", "bad host"),
    (("regions", "us-east4", "host"), "has space.example.com", "regions.us-east4.host", "bad host"),
    (("regions", "us-east4", "host"), "10.0.0.1", "regions.us-east4.host", "expected a DNS name"),
    (("project",), "../../x?y#", "project", "bad project"),
    (("project",), "My_Project", "project", "bad project"),
    (("project",), True, "project", "bad project true"),
    (("listener", "address"), "gateway.internal", "listener.address", "expected an IP address"),
    (("regions", "us-east4", "ca_file"), "/no/such/ca.pem", "regions.us-east4.ca_file", "cannot read ca_file"),
    (("models", "housing", "weights"), {"us-central1": True}, "models.housing.weights.us-central1",
     "expected a whole number"),
])
def test_envoy_bounds_and_strict_types(tmp_path, keys, value, path, fragment):
    data = base()
    set_key(*keys, value=value)(data)
    expect(tmp_path, data, path, fragment)


def test_ca_file_must_hold_pem_certificates(tmp_path):
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a garbage")
    data = base()
    data["regions"]["us-east4"]["ca_file"] = str(not_pem)
    expect(tmp_path, data, "regions.us-east4.ca_file", "holds no PEM certificate", line="ca_file:")


def test_a_choice_is_listed_as_written(tmp_path):
    data = base()
    set_key("regions", "us-east4", "health_check", value={"kind": "grpc"})(data)
    expect(tmp_path, data, "regions.us-east4.health_check.kind", "must be one of 'connect' or 'http' (got 'grpc')",
           only=True)
