"""regions.yaml's keys and names (SPEC "Rules"): unknown and required keys, model and region
names, addresses, projects.

Pure and fast: no network, no Envoy. Each config is written inline (to tmp_path) from a small
valid base that a test modifies; every rejection asserts the file, the key path, the meaningful
part of the message and, where the key exists in the file, its line (tests/config_problems.py).
"""

from __future__ import annotations

import pytest

from .config_problems import expect, find, load, rejected, set_key
from .configs import BASE_YAML, base

# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize("mutate, path", [
    (set_key("colour", value="blue"), "colour"),
    (set_key("regions", "us-east4", "adress", value="10.0.0.1"), "regions.us-east4.adress"),
    (set_key("policy", "timout", value="5s"), "policy.timout"),
    (set_key("policy", "outlier_detection", "consecutive5xx", value=3), "policy.outlier_detection.consecutive5xx"),
    (set_key("models", "housing", "endpoint", value={"us-east4": "1"}), "models.housing.endpoint"),
    (set_key("listener", "prot", value=8080), "listener.prot"),
    (set_key("auth", "credential", value="adc"), "auth.credential"),
    (set_key("regions", "us-east4", "policy", "retries", value=1), "regions.us-east4.policy.retries"),
    (set_key("regions", "us-east4", "policy", "outlier_detection", "intervall", value="1s"),
     "regions.us-east4.policy.outlier_detection.intervall"),
    (set_key("models", "housing", "policy", "per_try", value="1s"), "models.housing.policy.per_try"),
], ids=["top", "region", "policy", "outlier_detection", "model", "listener", "auth",
        "region-policy", "region-outlier_detection", "model-policy"])
def test_unknown_key(tmp_path, mutate, path):
    data = base()
    mutate(data)
    key = path.rsplit(".", 1)[-1]
    expect(tmp_path, data, path, "unknown key", line=f"{key}:", only=True)


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


# ---------------------------------------------------------------- names


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


# ---------------------------------------------------------------- projects, strict types


@pytest.mark.parametrize("project", ["my-project", "123456789012", "example.com:my-project", "a" * 30])
def test_good_projects(tmp_path, project):
    data = base()
    data["project"] = project
    assert load(tmp_path, data).project == project


def test_region_auth_as_a_list_is_a_problem_not_a_crash(tmp_path):
    data = base()
    data["regions"]["us-east4"]["auth"] = ["a", "b"]
    data["models"]["housing"]["auth"] = {"x": 1}
    _, _, problems = rejected(tmp_path, data)
    find(problems, "regions.us-east4.auth", "expected text")
    find(problems, "models.housing.auth", "expected text")
