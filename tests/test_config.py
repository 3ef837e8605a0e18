"""regions.yaml: every rule from SPEC "Region config" / "Rules", defaults, policy merging, the CLI.

Pure and fast: no network, no Envoy. Each config is written inline (to tmp_path) from a small
valid base that a test modifies; every rejection asserts the file, the key path, the meaningful
part of the message and, where the key exists in the file, its line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from control_plane.config import (
    PUBLISHER_VERBS,
    VERBS,
    ConfigError,
    Policy,
    PolicyOverride,
    Problem,
    load_config,
    parse_config,
    parse_duration,
)

from .config_problems import expect, find, load, rejected, write
from .configs import BASE_YAML, base

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the base is valid


def test_base_config_is_valid(tmp_path):
    config = load(tmp_path, BASE_YAML)
    assert config.project == "my-project"
    assert list(config.regions) == ["us-central1", "us-east4"]
    assert config.regions["us-central1"].address == "10.128.0.10"
    assert config.regions["us-central1"].failover == ["us-east4"]
    assert config.models["housing"].endpoints == {"us-central1": "1234567890", "us-east4": "9876543210"}
    assert config.default_model == "housing"
    assert config.listener.port == 8080


def test_spec_example_is_valid():
    """The full example from SPEC "Region config" parses, publisher model included."""
    spec_example = BASE_YAML.replace("    default: true\n", "    default: true                # also served at POST /predict\n") + """\
  gemini:
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1, us-east4]
policy:
  timeout: 60s
  per_try_timeout: 20s
  num_retries: 2
  retry_on: [5xx, reset, connect-failure, retriable-status-codes]
  retriable_status_codes: [429]
  outlier_detection: {consecutive_5xx: 3, interval: 5s, base_ejection_time: 30s, max_ejection_percent: 100}
auth:
  credentials: adc
  scopes: [https://www.googleapis.com/auth/cloud-platform]
  refresh_margin: 300s
"""
    spec_example = spec_example.replace(
        "    address: 10.128.0.10\n",
        "    address: 10.128.0.10         # PSC forwarding-rule IP (or a hostname)\n"
        "    port: 443\n    tls: true\n    host: us-central1-aiplatform.googleapis.com\n"
        "    ca_file: /etc/ssl/certs/ca-certificates.crt\n")
    config = parse_config(spec_example)
    assert config.models["gemini"].publisher_model == "google/gemini-2.0-flash"
    assert config.models["gemini"].served_regions == ["us-central1", "us-east4"]
    assert config.regions["us-central1"].ca_file == "/etc/ssl/certs/ca-certificates.crt"
    assert config.auth.refresh_margin == 300.0
    assert config.policy == Policy()  # the example spells out exactly the defaults


def test_verbs_match_spec():
    assert set(VERBS) == {"predict", "rawPredict", "streamRawPredict", "explain", "serverStreamingPredict"}
    assert {"generateContent", "streamGenerateContent", "countTokens"} <= set(PUBLISHER_VERBS)


# ---------------------------------------------------------------- unknown keys


def _set(*keys: str, value: Any) -> Callable[[dict], None]:
    def mutate(data: dict) -> None:
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return mutate


@pytest.mark.parametrize("mutate, path", [
    (_set("colour", value="blue"), "colour"),
    (_set("regions", "us-east4", "adress", value="10.0.0.1"), "regions.us-east4.adress"),
    (_set("policy", "timout", value="5s"), "policy.timout"),
    (_set("policy", "outlier_detection", "consecutive5xx", value=3), "policy.outlier_detection.consecutive5xx"),
    (_set("models", "housing", "endpoint", value={"us-east4": "1"}), "models.housing.endpoint"),
    (_set("listener", "prot", value=8080), "listener.prot"),
    (_set("auth", "credential", value="adc"), "auth.credential"),
    (_set("regions", "us-east4", "policy", "retries", value=1), "regions.us-east4.policy.retries"),
    (_set("regions", "us-east4", "policy", "outlier_detection", "intervall", value="1s"),
     "regions.us-east4.policy.outlier_detection.intervall"),
    (_set("models", "housing", "policy", "per_try", value="1s"), "models.housing.policy.per_try"),
], ids=["top", "region", "policy", "outlier_detection", "model", "listener", "auth",
        "region-policy", "region-outlier_detection", "model-policy"])
def test_unknown_key(tmp_path, mutate, path):
    data = base()
    mutate(data)
    key = path.rsplit(".", 1)[-1]
    expect(tmp_path, data, path, "unknown key", line=f"{key}:", only=True)


# ---------------------------------------------------------------- cross references


def test_model_naming_undefined_region(tmp_path):
    data = base()
    data["models"]["housing"]["endpoints"]["europe-west4"] = "5555"
    problem = expect(tmp_path, data, "models.housing.endpoints.europe-west4", "unknown region 'europe-west4'",
                     line="europe-west4:", only=True)
    assert "us-central1, us-east4" in problem.message  # says which regions exist


def test_publisher_model_naming_undefined_region(tmp_path):
    data = base()
    data["models"]["gemini"] = {"publisher_model": "google/gemini-2.0-flash", "regions": ["us-central1", "mars-1"]}
    expect(tmp_path, data, "models.gemini.regions[1]", "unknown region 'mars-1'", line="- mars-1", only=True)


def test_failover_unknown_region(tmp_path):
    data = base()
    data["regions"]["us-central1"]["failover"] = ["us-east4", "asia-east1"]
    problem = expect(tmp_path, data, "regions.us-central1.failover[1]", "unknown region 'asia-east1'",
                     line="- asia-east1", only=True)
    assert "us-central1, us-east4" in problem.message


def test_failover_to_itself(tmp_path):
    data = base()
    data["regions"]["us-east4"]["failover"] = ["us-east4"]
    expect(tmp_path, data, "regions.us-east4.failover[0]", "cannot fail over to itself",
           line="- us-east4", nth=2, only=True)


def test_failover_region_twice(tmp_path):
    data = base()
    data["regions"]["us-central1"]["failover"] = ["us-east4", "us-east4"]
    expect(tmp_path, data, "regions.us-central1.failover[1]", "'us-east4' listed twice",
           line="- us-east4", nth=2, only=True)


def test_failover_flow_list_line(tmp_path):
    """Flow-style lists (as operators write them) still get the right line."""
    text = BASE_YAML.replace("failover: [us-central1]", "failover: [us-central1, nowhere]")
    expect(tmp_path, text, "regions.us-east4.failover[1]", "unknown region 'nowhere'",
           line="failover: [us-central1, nowhere]", only=True)


def test_failover_not_a_list_of_names(tmp_path):
    data = base()
    data["regions"]["us-central1"]["failover"] = [["us-east4"]]
    expect(tmp_path, data, "regions.us-central1.failover[0]", "expected text")


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("address", [
    "10.128.0.10", "0.0.0.0", "::1", "2001:db8::10", "fe80::1", "psc.internal",
    "vertex-east.example.com", "localhost", "us-central1-aiplatform.googleapis.com", "host.example.com.",
])
def test_good_address(tmp_path, address):
    data = base()
    data["regions"]["us-east4"]["address"] = address
    assert load(tmp_path, data).regions["us-east4"].address == address


def test_unquoted_ipv6_address(tmp_path):
    text = BASE_YAML.replace("address: 10.150.0.10", "address: 2001:db8::10")
    assert load(tmp_path, text).regions["us-east4"].address == "2001:db8::10"


@pytest.mark.parametrize("address", [
    "not an address", "10.0.0.256", "1.2.3", "-bad.example.com", "bad-.example.com", "under_score.example",
    "http://10.0.0.1", "10.0.0.1:443", "", "a" * 64 + ".example.com", None, True, 10, ["10.0.0.1"],
])
def test_bad_address(tmp_path, address):
    data = base()
    data["regions"]["us-east4"]["address"] = address
    shown = "null" if address is None else "true" if address is True else repr(address)  # as written in YAML
    expect(tmp_path, data, "regions.us-east4.address", "bad address", shown,
           line="address:", nth=2, only=True)


def test_missing_address(tmp_path):
    data = base()
    del data["regions"]["us-east4"]["address"]
    expect(tmp_path, data, "regions.us-east4.address", "required key is missing", only=True)


def test_listener_address_is_checked(tmp_path):
    data = base()
    data["listener"]["address"] = "not an address"
    expect(tmp_path, data, "listener.address", "bad listener address", line="address: not an address", only=True)


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
], ids=lambda v: ".".join(v) if isinstance(v, tuple) else None)
def test_bad_duration(tmp_path, keys, value, fragment):
    data = base()
    _set(*keys, value=value)(data)
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
    _set(*keys, value="0s")(data)
    expect(tmp_path, data, ".".join(keys), "must be more than 0", line=f"{keys[-1]}:", only=True)


# ---------------------------------------------------------------- the default model


def test_missing_default_model(tmp_path):
    data = base()
    del data["models"]["housing"]["default"]
    expect(tmp_path, data, "models", "no default model", "default: true", line="models:", only=True)


def test_default_false_is_missing_default(tmp_path):
    data = base()
    data["models"]["housing"]["default"] = False
    expect(tmp_path, data, "models", "no default model", only=True)


def test_two_default_models(tmp_path):
    data = base()
    data["models"]["churn"] = {"default": True, "endpoints": {"us-east4": "444"}}
    expect(tmp_path, data, "models.churn.default", "more than one default model", "housing, churn",
           line="default: true", nth=2, only=True)


def test_default_must_be_a_real_boolean(tmp_path):
    """`default: yes` is a string in YAML 1.2: say that, not just "no default"."""
    text = BASE_YAML.replace("default: true", "default: yes")
    _, _, problems = rejected(tmp_path, text)
    find(problems, "models.housing.default", "expected true or false", "'yes'")
    find(problems, "models", "no default model")


def test_default_model_property(tmp_path):
    data = base()
    data["models"] = {"churn": {"endpoints": {"us-east4": "444"}}, **data["models"]}
    config = load(tmp_path, data)
    assert config.default_model == "housing"
    assert config.models["churn"].default is False


# ---------------------------------------------------------------- empty / malformed files


@pytest.mark.parametrize("text", ["", "\n\n", "   \n", "# only comments\n# nothing else\n", "{}", "{}\n# x\n", "---\n"],
                         ids=["empty", "newlines", "spaces", "comments", "empty-map", "empty-map-comment", "doc-start"])
def test_empty_file(tmp_path, text):
    file, _, problems = rejected(tmp_path, text)
    assert len(problems) == 1
    problem = problems[0]
    assert problem.file == str(file) and problem.path == "" and problem.line is None
    assert "empty" in problem.message
    assert str(problem) == f"{file}: (top): {problem.message}"


@pytest.mark.parametrize("text, line, fragment", [
    ("project: p\nregions: {}\n  bad: value: here\n", 3, "invalid YAML"),
    ("project: p\nregions:\n  us: {address: 1\nmodels: {}\n", 4, "invalid YAML"),
    ("project: a: b\n", 1, "mapping values are not allowed"),
    ("project: p\n\tregions: {}\n", 2, "tab"),
    ("project: p\n---\nproject: q\n", 2, "invalid YAML"),
])
def test_invalid_yaml(tmp_path, text, line, fragment):
    expect(tmp_path, text, "", "invalid YAML", fragment, line=line, only=True)


@pytest.mark.parametrize("text, fragment", [
    ("- project: p\n- regions: {}\n", "got a list"),
    ("just a string\n", "expected a mapping"),
    ("42\n", "expected a mapping"),
])
def test_top_level_not_a_mapping(tmp_path, text, fragment):
    problem = expect(tmp_path, text, "", "expected a mapping", fragment, only=True)
    assert problem.line is None


def test_duplicate_top_level_key(tmp_path):
    text = BASE_YAML + "project: other-project\n"
    expect(tmp_path, text, "", "duplicate key", '"project"', line="project: other-project", only=True)


def test_duplicate_nested_key(tmp_path):
    text = BASE_YAML.replace("  us-east4:\n    address: 10.150.0.10\n",
                             "  us-east4:\n    address: 10.150.0.10\n    address: 10.150.0.11\n")
    expect(tmp_path, text, "", "duplicate key", '"address"', line="address: 10.150.0.11", only=True)


def test_duplicate_region(tmp_path):
    text = BASE_YAML.replace("models:\n", "  us-east4:\n    address: 10.0.0.3\nmodels:\n")
    expect(tmp_path, text, "", "duplicate key", '"us-east4"', line="us-east4:", nth=2, only=True)


# ---------------------------------------------------------------- endpoints


@pytest.mark.parametrize("endpoint_id", ["abc", "12-34", "", "1234 5678", "projects/p/endpoints/1", "1" * 20])
def test_endpoint_id_not_numeric(tmp_path, endpoint_id):
    data = base()
    data["models"]["housing"]["endpoints"]["us-east4"] = endpoint_id
    expect(tmp_path, data, "models.housing.endpoints.us-east4", "bad endpoint id", repr(endpoint_id),
           line="us-east4:", nth=2, only=True)


def test_endpoint_ids_as_yaml_ints_become_strings(tmp_path):
    text = BASE_YAML.replace('"1234567890"', "1234567890").replace('"9876543210"', "9876543210")
    assert "us-east4: 9876543210" in text
    config = load(tmp_path, text)
    endpoints = config.models["housing"].endpoints
    assert endpoints == {"us-central1": "1234567890", "us-east4": "9876543210"}
    assert all(type(v) is str for v in endpoints.values())


def test_same_endpoint_id_in_two_models(tmp_path):
    data = base()
    data["models"]["churn"] = {"endpoints": {"us-east4": "9876543210"}}
    expect(tmp_path, data, "models.churn.endpoints.us-east4", "endpoint id 9876543210", "also used by model 'housing'",
           line="us-east4: '9876543210'", nth=2, only=True)


def test_same_endpoint_id_as_int_and_string_in_two_models(tmp_path):
    text = BASE_YAML + "  churn:\n    endpoints: {us-east4: 9876543210}\n"
    expect(tmp_path, text, "models.churn.endpoints.us-east4", "also used by model 'housing'", only=True)


def test_same_model_may_reuse_its_id_across_regions(tmp_path):
    data = base()
    data["models"]["housing"]["endpoints"]["us-east4"] = "1234567890"
    assert load(tmp_path, data).models["housing"].endpoints["us-east4"] == "1234567890"


@pytest.mark.parametrize("model", [{}, {"endpoints": {}}, {"default": False}, {"regions": ["us-east4"]}],
                         ids=["empty", "empty-endpoints", "only-default", "only-regions"])
def test_model_with_neither_endpoints_nor_publisher(tmp_path, model):
    data = base()
    data["models"]["churn"] = model
    expect(tmp_path, data, "models.churn", "needs `endpoints:`", "`publisher_model:`", line="churn:", only=True)


def test_model_with_both_endpoints_and_publisher(tmp_path):
    data = base()
    data["models"]["housing"].update(publisher_model="google/gemini-2.0-flash", regions=["us-east4"])
    expect(tmp_path, data, "models.housing", "either `endpoints:` or `publisher_model:`, not both",
           line="housing:", only=True)


# ---------------------------------------------------------------- publisher models


def test_publisher_model_accepted(tmp_path):
    data = base()
    data["models"]["gemini"] = {"publisher_model": "google/gemini-2.0-flash", "regions": ["us-east4", "us-central1"]}
    model = load(tmp_path, data).models["gemini"]
    assert model.publisher_model == "google/gemini-2.0-flash"
    assert model.endpoints == {}
    assert model.served_regions == ["us-east4", "us-central1"]


@pytest.mark.parametrize("regions", [None, []], ids=["absent", "empty"])
def test_publisher_model_without_regions(tmp_path, regions):
    data = base()
    data["models"]["gemini"] = {"publisher_model": "google/gemini-2.0-flash"}
    if regions is not None:
        data["models"]["gemini"]["regions"] = regions
    expect(tmp_path, data, "models.gemini.regions", "publisher model needs `regions:`", only=True)


@pytest.mark.parametrize("name", ["gemini-2.0-flash", "google/", "/gemini", "google/gemini/flash",
                                  "Google Models/gemini", "google/gemini 2", "google:gemini"])
def test_bad_publisher_model(tmp_path, name):
    data = base()
    data["models"]["gemini"] = {"publisher_model": name, "regions": ["us-east4"]}
    expect(tmp_path, data, "models.gemini.publisher_model", "bad publisher model", repr(name),
           "PUBLISHER/MODEL", line="publisher_model:", only=True)


@pytest.mark.parametrize("name", ["google/gemini-2.0-flash", "meta/llama-3.1-8b-instruct",
                                  "anthropic/claude-3-5-sonnet@20240620", "google/text_embedding.005"])
def test_good_publisher_model(tmp_path, name):
    data = base()
    data["models"]["pm"] = {"publisher_model": name, "regions": ["us-east4"]}
    assert load(tmp_path, data).models["pm"].publisher_model == name


# ---------------------------------------------------------------- names, numbers


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "a/b", "a:b", "model?", "näme", ".hidden"])
def test_bad_model_name(tmp_path, name):
    data = base()
    data["models"][name] = {"endpoints": {"us-east4": "444"}}
    expect(tmp_path, data, f"models.{name}", "bad model name", repr(name), only=True)


@pytest.mark.parametrize("name", ["housing-v2", "m_1", "v1.2", "A1", "7"])
def test_good_model_name(tmp_path, name):
    data = base()
    data["models"][name] = {"endpoints": {"us-east4": "444"}}
    assert name in load(tmp_path, data).models


def test_bad_region_name(tmp_path):
    data = base()
    data["regions"]["us east4"] = {"address": "10.0.0.9"}
    expect(tmp_path, data, "regions.us east4", "bad region name", only=True)


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
    _set(*keys, "num_retries", value=value)(data)
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
    _set(*keys, "retry_on", value=["5xx", "timeout"])(data)
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
    _set(*keys, "retriable_status_codes", value=[429, code])(data)
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
    _set(*keys, value=value)(data)
    expect(tmp_path, data, ".".join(keys), fragment, line=f"{keys[-1]}:", only=True)


# ---------------------------------------------------------------- required keys


def test_missing_project(tmp_path):
    data = base()
    del data["project"]
    problem = expect(tmp_path, data, "project", "required key is missing", only=True)
    assert problem.line is None
    assert str(problem) == f"{problem.file}: project: required key is missing"


def test_empty_project(tmp_path):
    data = base()
    data["project"] = ""
    expect(tmp_path, data, "project", "must not be empty", line="project:", only=True)


def test_project_number(tmp_path):
    """SPEC: `project` is an id or a number; an unquoted number is fine."""
    text = BASE_YAML.replace("project: my-project", "project: 123456789012")
    assert load(tmp_path, text).project == "123456789012"


@pytest.mark.parametrize("key", ["regions", "models"])
def test_missing_regions_or_models(tmp_path, key):
    data = base()
    del data[key]
    problem = expect(tmp_path, data, key, "required key is missing")
    assert problem.line is None


@pytest.mark.parametrize("key, message", [("regions", "no regions defined"), ("models", "no models defined")])
def test_empty_regions_or_models(tmp_path, key, message):
    data = base()
    data[key] = {}
    expect(tmp_path, data, key, message, line=f"{key}:")


@pytest.mark.parametrize("key", ["regions", "models"])
def test_null_regions_or_models(tmp_path, key):
    text = BASE_YAML.split(f"{key}:")[0] + f"{key}:\n" + (
        "" if key == "models" else "models:\n" + BASE_YAML.split("models:\n")[1])
    expect(tmp_path, text, key, "expected a mapping", line=f"{key}:")


# ---------------------------------------------------------------- all problems at once


def test_several_problems_all_reported(tmp_path):
    text = """\
project: my-project
colour: blue
regions:
  us-central1:
    address: not an address
    failover: [us-east4, us-central1, asia-east1]
  us-east4:
    address: 10.150.0.10
    port: 99999
models:
  housing:
    endpoints:
      us-central1: "12ab"
      europe-west4: "555"
  churn:
    endpoints: {us-east4: "555"}
  "bad name":
    publisher_model: gemini
policy:
  timeout: soon
  num_retries: 42
  retry_on: [5xx, sometimes]
"""
    file, _, problems = rejected(tmp_path, text)
    expected = [
        ("colour", "unknown key", 2),
        ("regions.us-central1.address", "bad address 'not an address'", 5),
        ("regions.us-central1.failover[1]", "cannot fail over to itself", 6),
        ("regions.us-central1.failover[2]", "unknown region 'asia-east1'", 6),
        ("regions.us-east4.port", "must be at most 65535", 9),
        ("models.housing.endpoints.us-central1", "bad endpoint id '12ab'", 13),
        ("models.housing.endpoints.europe-west4", "unknown region 'europe-west4'", 14),
        ("models.churn.endpoints.us-east4", "also used by model 'housing'", 16),
        ("models", "no default model", 10),
        ("models.bad name", "bad model name", 17),
        ("models.bad name.publisher_model", "bad publisher model 'gemini'", 18),
        ("models.bad name.regions", "publisher model needs `regions:`", 17),
        ("policy.timeout", "bad duration 'soon'", 20),
        ("policy.num_retries", "must be at most 10", 21),
        ("policy.retry_on", "unknown retry_on 'sometimes'", 22),
    ]
    for path, fragment, line in expected:
        problem = find(problems, path, fragment)
        assert problem.file == str(file)
        assert problem.line == line, str(problem)
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    # no problem is reported twice
    assert len({(p.path, p.message) for p in problems}) == len(problems)


def test_parse_config_names_the_given_file():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE_YAML + "colour: blue\n", "/etc/gw/regions.yaml")
    (problem,) = info.value.problems
    assert problem == Problem("/etc/gw/regions.yaml", "colour", "unknown key", 16)
    assert str(problem) == "/etc/gw/regions.yaml:16: colour: unknown key"
    assert str(info.value) == "/etc/gw/regions.yaml:16: colour: unknown key"


def test_problem_rendering():
    assert str(Problem("r.yaml", "regions.us-east4.failover[0]", "boom", 7)) == "r.yaml:7: regions.us-east4.failover[0]: boom"
    assert str(Problem("r.yaml", "project", "boom")) == "r.yaml: project: boom"
    assert str(Problem("r.yaml", "", "boom", 3)) == "r.yaml:3: (top): boom"


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (problem,) = info.value.problems
    assert problem.file == str(missing)
    assert "cannot read" in problem.message and "No such file" in problem.message
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_binary_file(tmp_path):
    path = tmp_path / "regions.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path) and "cannot read" in problem.message


# ---------------------------------------------------------------- defaults


def test_region_defaults(tmp_path):
    data = base()
    data["regions"]["eu"] = {"address": "10.0.0.3"}
    config = load(tmp_path, data)
    region = config.regions["us-east4"]
    assert region.port == 443
    assert region.tls is True
    assert region.ca_file is None
    assert region.policy is None
    assert config.regions["eu"].failover == []
    assert config.host_of("us-east4") == "us-east4-aiplatform.googleapis.com"
    assert config.host_of("us-central1") == "us-central1-aiplatform.googleapis.com"
    assert config.host_of("eu") == "eu-aiplatform.googleapis.com"


def test_explicit_region_settings(tmp_path):
    data = base()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    data["regions"]["us-east4"].update(port=8443, tls=False, host="vertex.east.internal", ca_file=str(ca_file))
    config = load(tmp_path, data)
    region = config.regions["us-east4"]
    assert (region.port, region.tls, region.ca_file) == (8443, False, str(ca_file))
    assert config.host_of("us-east4") == "vertex.east.internal"


def test_policy_and_auth_defaults(tmp_path):
    config = load(tmp_path, BASE_YAML)
    policy = config.policy
    assert policy.timeout == 60.0
    assert policy.per_try_timeout == 20.0
    assert policy.num_retries == 2
    assert policy.retry_on == ["5xx", "reset", "connect-failure", "retriable-status-codes"]
    assert policy.retriable_status_codes == [429]
    od = policy.outlier_detection
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent) == (3, 5.0, 30.0, 100)
    assert config.auth.credentials == "adc"
    assert config.auth.scopes == ["https://www.googleapis.com/auth/cloud-platform"]
    assert config.auth.refresh_margin == 300.0
    assert config.listener.port == 8080
    # no overrides anywhere: every (model, region) gets the defaults
    assert config.policy_for("housing", "us-east4") == policy


def test_partial_outlier_detection_keeps_other_defaults(tmp_path):
    data = base()
    data["policy"] = {"outlier_detection": {"consecutive_5xx": 7}}
    od = load(tmp_path, data).policy.outlier_detection
    assert (od.consecutive_5xx, od.interval, od.base_ejection_time, od.max_ejection_percent) == (7, 5.0, 30.0, 100)


# ---------------------------------------------------------------- policy merging


def test_policy_merging(tmp_path):
    data = base()
    data["models"]["churn"] = {"endpoints": {"us-central1": "111", "us-east4": "222"}}
    data["policy"] = {"timeout": "30s", "num_retries": 3, "retriable_status_codes": [429, 503],
                      "outlier_detection": {"interval": "10s", "consecutive_5xx": 4}}
    data["regions"]["us-east4"]["policy"] = {"num_retries": 1, "per_try_timeout": "5s",
                                             "outlier_detection": {"consecutive_5xx": 9}}
    data["models"]["housing"]["policy"] = {"num_retries": 0, "retry_on": ["5xx"], "timeout": "2m"}
    config = load(tmp_path, data)

    # defaults only (plus the model override): churn has none, us-central1 has none
    plain = config.policy_for("churn", "us-central1")
    assert (plain.timeout, plain.per_try_timeout, plain.num_retries) == (30.0, 20.0, 3)
    assert plain.retriable_status_codes == [429, 503]
    assert (plain.outlier_detection.interval, plain.outlier_detection.consecutive_5xx) == (10.0, 4)

    # region override over the defaults; keys it does not name stay as the defaults say
    east = config.policy_for("churn", "us-east4")
    assert (east.timeout, east.per_try_timeout, east.num_retries) == (30.0, 5.0, 1)
    assert east.retry_on == ["5xx", "reset", "connect-failure", "retriable-status-codes"]
    assert east.outlier_detection.consecutive_5xx == 9
    assert east.outlier_detection.interval == 10.0  # merged key by key, not reset to 5s
    assert east.outlier_detection.base_ejection_time == 30.0

    # model override over the region override over the defaults
    housing_east = config.policy_for("housing", "us-east4")
    assert housing_east.num_retries == 0            # model beats region beats defaults
    assert housing_east.per_try_timeout == 5.0      # region
    assert housing_east.timeout == 120.0            # model
    assert housing_east.retry_on == ["5xx"]         # model
    assert housing_east.retriable_status_codes == [429, 503]  # defaults
    assert housing_east.outlier_detection.consecutive_5xx == 9

    housing_central = config.policy_for("housing", "us-central1")
    assert (housing_central.num_retries, housing_central.per_try_timeout, housing_central.timeout) == (0, 20.0, 120.0)

    # merging does not mutate the defaults
    assert config.policy.num_retries == 3 and config.policy.outlier_detection.consecutive_5xx == 4


def test_policy_merged_directly():
    defaults = Policy(num_retries=4)
    region = PolicyOverride(num_retries=1, timeout=10)
    model = PolicyOverride(per_try_timeout=2)
    merged = defaults.merged(region, None, model)
    assert (merged.num_retries, merged.timeout, merged.per_try_timeout) == (1, 10.0, 2.0)
    assert defaults.merged() == defaults
    assert PolicyOverride().model_dump(exclude_none=True) == {}


# ---------------------------------------------------------------- version


def test_version_stable_and_content_addressed(tmp_path):
    v1 = parse_config(BASE_YAML).version
    assert isinstance(v1, str) and v1
    assert parse_config(BASE_YAML).version == v1
    assert load(tmp_path, BASE_YAML).version == v1
    # same content, different comments and layout: same version (nothing to push)
    restyled = "# edited by ops\n" + BASE_YAML.replace("failover: [us-east4]", "failover:\n      - us-east4  # dr")
    assert parse_config(restyled).version == v1
    # any content change: a new version
    assert parse_config(BASE_YAML.replace("10.150.0.10", "10.150.0.11")).version != v1
    assert parse_config(BASE_YAML.replace('"9876543210"', '"9876543211"')).version != v1
    assert parse_config(BASE_YAML + "policy: {num_retries: 1}\n").version != v1


# ---------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control_plane", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_validate_ok(tmp_path):
    path = write(tmp_path, BASE_YAML)
    result = cli("validate", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert "OK" in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_validate_lists_every_problem(tmp_path):
    text = BASE_YAML.replace("failover: [us-central1]", "failover: [us-east4, mars-1]") + "colour: blue\n" \
        + "policy: {timeout: soon}\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert len(problems) == 4
    result = cli("validate", str(path))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    for problem in problems:
        assert str(problem) in output
    assert f"{path}:9: regions.us-east4.failover[0]: region 'us-east4' cannot fail over to itself" in output
    assert f"{path}:9: regions.us-east4.failover[1]: unknown region 'mars-1'" in output
    assert f"{path}:16: colour: unknown key" in output
    assert f"{path}:17: policy.timeout: bad duration 'soon'" in output
    assert "OK" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("text", ["", "- a\n", "project: [\n"], ids=["empty", "list", "invalid-yaml"])
def test_cli_validate_bad_files(tmp_path, text):
    path = write(tmp_path, text)
    result = cli("validate", str(path))
    assert result.returncode == 1
    assert str(path) in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_missing_file(tmp_path):
    path = tmp_path / "does-not-exist.yaml"
    result = cli("validate", str(path))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert str(path) in output
    assert "cannot read" in output and "No such file" in output
    assert "Traceback" not in output


# ---------------------------------------------------------------- Envoy's bounds, strict types, hostile input


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
    _set(*keys, value=value)(data)
    expect(tmp_path, data, path, fragment)


def test_ca_file_must_hold_pem_certificates(tmp_path):
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a garbage")
    data = base()
    data["regions"]["us-east4"]["ca_file"] = str(not_pem)
    expect(tmp_path, data, "regions.us-east4.ca_file", "holds no PEM certificate", line="ca_file:")


@pytest.mark.parametrize("project", ["my-project", "123456789012", "example.com:my-project", "a" * 30])
def test_good_projects(tmp_path, project):
    data = base()
    data["project"] = project
    assert load(tmp_path, data).project == project


def test_largest_duration_is_accepted(tmp_path):
    data = base()
    data["policy"] = {"timeout": "2562047h"}  # 292 years: Envoy's range is int64 milliseconds
    assert load(tmp_path, data).policy.timeout == 2_562_047 * 3600


def test_region_auth_as_a_list_is_a_problem_not_a_crash(tmp_path):
    data = base()
    data["regions"]["us-east4"]["auth"] = ["a", "b"]
    data["models"]["housing"]["auth"] = {"x": 1}
    _, _, problems = rejected(tmp_path, data)
    find(problems, "regions.us-east4.auth", "expected text")
    find(problems, "models.housing.auth", "expected text")


def test_problems_are_sorted_by_line(tmp_path):
    text = BASE_YAML.replace("listener: {port: 8080}", "listener: {port: 0}").replace(
        "    failover: [us-central1]", "    failover: [nowhere]\n    port: 70000")
    _, _, problems = rejected(tmp_path, text)
    lines = [p.line or 0 for p in problems]
    assert lines == sorted(lines) and len(problems) == 3


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)),
     "aliases expand the document beyond"),
    ("project: " + "[" * 200 + "]" * 200 + "\n", "nesting deeper than 64 levels"),
    ("project: p\nproject: q\n", 'duplicate key "project"'),
])
def test_hostile_yaml_is_refused(tmp_path, text, fragment):
    expect(tmp_path, text, "", fragment, only=True)


def test_file_size_cap_and_raising_it(tmp_path):
    from control_plane.yamlsafe import Limits

    padded = BASE_YAML + "#" + "x" * 5_000_000 + "\n"
    path = write(tmp_path, padded)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "over the limit of 4,194,304" in str(info.value) and "--max-config-bytes" in str(info.value)
    assert load_config(path, Limits().scaled(8 * 1024 * 1024)).project == "my-project"


def test_yaml_1_2_booleans(tmp_path):
    """`no`, `on`, `off` are strings in YAML 1.2 (the fast and the line-numbered parser agree)."""
    data = base()
    data["regions"]["no"] = {"address": "10.0.0.7"}
    assert "no" in load(tmp_path, data).regions
    expect(tmp_path, BASE_YAML.replace("default: true", "default: on"), "models.housing.default",
           "expected true or false (got 'on')", line="default: on")


def test_cli_validate_builds_what_serve_builds(tmp_path):
    """exit 0 means serve loads it: the bounds above fail validate exactly as they fail serve."""
    data = base()
    data["policy"] = {"max_request_bytes": 5_000_000_000}
    result = cli("validate", str(write(tmp_path, data)))
    assert result.returncode == 1 and "policy.max_request_bytes" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_validate_auth_list_no_traceback(tmp_path):
    data = base()
    data["regions"]["us-east4"]["auth"] = ["a", "b"]
    result = cli("validate", str(write(tmp_path, data)))
    assert result.returncode == 1 and "regions.us-east4.auth" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_serve_refuses_a_bad_file_with_exit_1(tmp_path):
    data = base()
    data["policy"] = {"max_request_bytes": 5_000_000_000}
    result = cli("serve", "--config", str(write(tmp_path, data)), "--xds-port", "0", "--admin-port", "0")
    assert result.returncode == 1
    assert "refusing to start" in result.stderr and "policy.max_request_bytes" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
