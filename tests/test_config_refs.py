"""regions.yaml's cross references (SPEC "Rules"): the regions models and failover lists name,
endpoint ids, publisher models, the one default model.

Pure and fast: no network, no Envoy. Each config is written inline (to tmp_path) from a small
valid base that a test modifies; every rejection asserts the file, the key path, the meaningful
part of the message and, where the key exists in the file, its line (tests/config_problems.py).
"""

from __future__ import annotations

import pytest

from .config_problems import expect, find, load, rejected
from .configs import BASE_YAML, base

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


def test_model_names_that_differ_only_in_dot_and_underscore_are_refused(tmp_path):
    from .config_problems import rejected
    from .configs import base

    data = base()
    data["models"]["v2.0"] = {"endpoints": {"us-central1": "7771"}}
    data["models"]["v2_0"] = {"endpoints": {"us-central1": "7772"}}
    _, _, problems = rejected(tmp_path, data)
    assert [p.message for p in problems if p.path == "models.v2_0"] == [
        "model names 'v2.0' and 'v2_0' differ only in '.' and '_': Envoy's metrics would not tell them apart "
        "(they write '.' as '_')"]


def test_region_and_grant_names_that_differ_only_in_dot_and_underscore_are_refused(tmp_path):
    from .config_problems import rejected
    from .configs import base

    data = base()
    data["regions"]["edge.a"] = {"kind": "custom", "address": "10.0.0.1", "tls": False}
    data["regions"]["edge_a"] = {"kind": "custom", "address": "10.0.0.2", "tls": False}
    _, _, problems = rejected(tmp_path, data)
    assert "region names 'edge.a' and 'edge_a' differ only in '.' and '_'" in \
        " ".join(p.message for p in problems if p.path == "regions.edge_a")
