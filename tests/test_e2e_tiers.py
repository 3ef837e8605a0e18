"""Capacity tiers and the global endpoint, through a real Envoy: a publisher model tries
Provisioned Throughput in the local region, then pay-as-you-go there, then the next region, then
the `global` location; each attempt carries its own tier header, path and host."""

from __future__ import annotations

import pytest

from control_plane.lab.stack import PROJECT, Stack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4", "global")
TIERS = {"us-central1": ["dedicated", "shared"], "us-east4": ["priority"]}  # global: default (none listed)
BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
MODEL_PATH = "/publishers/google/models/gemini-2.0-flash:generateContent"


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=REGIONS, extra={
        "policy": {"num_retries": 5, "outlier_detection": {"consecutive_5xx": 1000}},
        "models": {"gemini": {"publisher_model": "google/gemini-2.0-flash", "regions": list(REGIONS),
                              "tiers": TIERS}}})
    yield stack
    stack.close()


def attempts(stack) -> list[tuple[str, str]]:
    """(region, tier) of every attempt the emulators saw, in arrival order."""
    received = sorted((r for e in stack.emulators.values() for r in e.received), key=lambda r: r.time)
    return [(r.region, r.tier) for r in received]


def generate(stack, **headers):
    return stack.post("/v1/models/gemini:generateContent", json=BODY, headers=headers)


def test_the_first_tier_of_the_local_region_goes_first_and_replaces_the_clients_tier(stack):
    stack.reset()
    response = generate(stack, **{"X-Vertex-AI-LLM-Request-Type": "shared",
                                  "X-Vertex-AI-LLM-Shared-Request-Type": "priority"})
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-central1"
    assert "x-vertex-ai-llm-shared-request-type" not in stack.emulators["us-central1"].received[0].headers
    assert attempts(stack) == [("us-central1", "dedicated")]


def test_provisioned_throughput_exhausted_goes_to_pay_as_you_go_in_the_same_region(stack):
    stack.reset()
    stack.emulators["us-central1"].fail_tier("dedicated", 429)
    response = generate(stack)
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-central1"
    assert attempts(stack) == [("us-central1", "dedicated"), ("us-central1", "shared")]


def test_the_global_location_is_the_last_resort_with_its_own_host_and_path(stack):
    stack.reset()
    stack.emulators["us-central1"].fail("429")
    stack.emulators["us-east4"].fail_tier("priority", 429)
    response = generate(stack)
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "global"
    assert attempts(stack) == [("us-central1", "dedicated"), ("us-central1", "shared"),
                               ("us-east4", "priority"), ("global", "")]
    east = stack.emulators["us-east4"].received[0]
    assert east.headers["x-vertex-ai-llm-shared-request-type"] == "priority"
    last = stack.emulators["global"].received[0]
    assert last.path == f"/v1/projects/{PROJECT}/locations/global{MODEL_PATH}"
    assert last.host == "aiplatform.googleapis.com"
    assert "x-vertex-ai-llm-shared-request-type" not in last.headers  # not carried over from us-east4
    assert "x-vertex-ai-llm-request-type" not in last.headers  # "default": no tier header


def test_a_model_without_tiers_keeps_the_clients_tier_headers(stack):
    stack.reset()
    response = stack.post("/v1/models/housing:predict", json={"instances": [1]},
                          headers={"X-Vertex-AI-LLM-Request-Type": "dedicated"})
    assert response.status_code == 200
    assert attempts(stack) == [("us-central1", "dedicated")]


def test_a_pinned_request_keeps_the_clients_tier(stack):
    stack.reset()
    response = generate(stack, **{"X-Vertex-AI-LLM-Request-Type": "shared", "x-vertex-pin-region": "global"})
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "global"
    assert attempts(stack) == [("global", "shared")]
