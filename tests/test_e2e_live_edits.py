"""Operators edit regions.yaml while traffic flows: every edit is applied make-before-break,
so bounded load during each edit sees no error, in both xDS modes."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests

from control_plane.lab.harness import wait_for
from control_plane.lab.loadgen import run_load, summary
from control_plane.lab.stack import DELETE, Stack

pytestmark = pytest.mark.e2e

TOTAL, CONCURRENCY, EDIT_AT = 600, 16, 150
BODY = json.dumps({"instances": [{"x": 1}]}).encode()


@pytest.fixture(params=["sotw", "delta"])
def stack(request):
    # europe-west4 has an emulator but is not in the config yet: "add a region" adds it
    stack = Stack(regions=("us-central1", "us-east4", "europe-west4"), envoys=("us-central1",),
                  delta=request.param == "delta", extra={
                      "regions": {"europe-west4": DELETE, "us-central1": {"failover": ["us-east4"]}},
                      "models": {"housing": {"endpoints": {"europe-west4": DELETE}},
                                 "churn": {"endpoints": {"europe-west4": DELETE}}}})
    stack.wait_synced()
    yield stack
    stack.close()


def load_during(stack, edit, model="housing"):
    result = asyncio.run(run_load(stack.url(f"/v1/models/{model}:predict"), TOTAL, CONCURRENCY, BODY,
                                  events={EDIT_AT: edit}, deadline_s=60))
    assert len(result.samples) == TOTAL
    assert result.errors == [], summary(result.errors)
    # well under Envoy's 15 s warming timeout: an updated cluster must not wait for it
    stack.wait_synced(timeout=5)
    return result


def test_add_a_region_and_change_the_failover_order(stack):
    east = stack.emulators["europe-west4"]
    load_during(stack, lambda: stack.update_config({
        "regions": {"europe-west4": {"address": "127.0.0.1", "port": east.port, "tls": False,
                                     "failover": ["us-central1"]},
                    "us-central1": {"failover": ["europe-west4", "us-east4"]}},
        "models": {"housing": {"endpoints": {"europe-west4": "3003"}}}}))
    stack.emulators["us-central1"].fail("503")
    assert stack.post("/predict", json={"instances": [1]}).headers["x-vertex-region"] == "europe-west4"


def test_change_an_endpoint_id(stack):
    local = stack.emulators["us-central1"]
    local.endpoints["1009"] = "housing"  # the model was redeployed to a new endpoint
    load_during(stack, lambda: stack.update_config({"models": {"housing": {"endpoints": {"us-central1": "1009"}}}}))
    stack.reset()
    stack.post("/predict", json={"instances": [1]})
    assert local.received[-1].path.endswith("/endpoints/1009:predict")


def test_add_and_remove_a_model(stack):
    for emulator, endpoint in zip(stack.emulators.values(), ("5001", "5002", "5003")):
        emulator.endpoints[endpoint] = "vision"
    load_during(stack, lambda: stack.update_config({"models": {"vision": {"endpoints": {
        "us-central1": "5001", "us-east4": "5002"}}}}))
    assert stack.post("/v1/models/vision:predict", json={"instances": [1]}).status_code == 200
    load_during(stack, lambda: stack.update_config({"models": {"churn": DELETE}}))
    assert stack.post("/v1/models/churn:predict", json={"instances": [1]}).status_code == 404


def test_a_broken_edit_is_rejected_and_a_later_good_edit_applies(stack):
    version = stack.plane.plane.cache.config.version
    stack.config_path.write_text("regions: {us-central1: {address: 'not an address!'}}\n")
    wait_for(lambda: not requests.get(stack.plane.admin_url + "/debug/regions", timeout=5).json()["last_reload"]["ok"],
             what="the watcher to reject the edit")
    regions = requests.get(stack.plane.admin_url + "/debug/regions", timeout=5).json()
    assert regions["version"] == version and any("address" in e for e in regions["last_reload"]["errors"])
    metrics = requests.get(stack.plane.admin_url + "/metrics", timeout=5).text
    assert 'vertex_gateway_config_reloads_total{result="failed"}' in metrics
    assert "vertex_gateway_config_last_reload_ok 0.0" in metrics
    assert stack.post("/predict", json={"instances": [1]}).status_code == 200  # still serving
    stack.update_config({"policy": {"timeout": "45s"}})
    wait_for(lambda: requests.get(stack.plane.admin_url + "/debug/regions", timeout=5).json()["last_reload"]["ok"])
    stack.wait_synced()


def test_kubelet_configmap_updates_each_reach_the_envoys():
    """A mounted ConfigMap is updated by swapping its `..data` symlink: every update, not only
    the first, reaches the Envoys through the product's own file watcher."""
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), configmap=True)
    try:
        stack.wait_synced()
        local = stack.emulators["us-central1"]
        for i in range(5):
            endpoint_id = str(1100 + i)  # the model redeployed to a new endpoint, five times
            local.endpoints[endpoint_id] = "housing"
            stack.config["models"]["housing"]["endpoints"]["us-central1"] = endpoint_id
            stack.configmap.write({"regions.yaml": json.dumps(stack.config)})  # JSON is YAML
            wait_for(lambda: stack.post("/predict", json={"instances": [1]}).json()["predictions"][0]["endpoint_id"]
                     == endpoint_id,
                     10, what=f"update {i + 1} served by the Envoy")
        regions = requests.get(stack.plane.admin_url + "/debug/regions", timeout=5).json()
        assert regions["last_reload"]["ok"] and regions["last_reload"]["reason"] == "file changed"
        stack.wait_synced(timeout=5)
    finally:
        stack.close()
