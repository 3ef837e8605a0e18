"""Routing beyond failover, in a real Envoy: weighted spread, least-request, region pinning,
and publisher models (Gemini) failing over on 429 with SSE streaming intact."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
import requests

from control_plane.lab.loadgen import run_load
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4", "europe-west4")
WEIGHTS = {"us-central1": 60, "us-east4": 30, "europe-west4": 10}


def spread(stack, total=1000, concurrency=8, model="housing"):
    result = asyncio.run(run_load(stack.url(f"/v1/models/{model}:predict"), total, concurrency,
                                  b'{"instances": [1]}', deadline_s=60))
    assert len(result.samples) == total and not result.errors
    return result, Counter(s.region for s in result.samples)


@pytest.fixture(scope="module")
def weighted():
    stack = Stack(regions=REGIONS, extra={"models": {"housing": {"strategy": "weighted", "weights": WEIGHTS}},
                                          "policy": {"per_try_timeout": "1s",
                                                     "outlier_detection": {"consecutive_5xx": 1000}}})
    yield stack
    stack.close()


def test_weighted_first_attempts_follow_the_weights(weighted):
    weighted.reset()
    _, counts = spread(weighted)
    for region, weight in WEIGHTS.items():  # a random pick per request: within 4 standard deviations
        p = weight / 100
        assert abs(counts[region] / 1000 - p) <= 4 * (p * (1 - p) / 1000) ** 0.5, counts


def test_weighted_retries_go_to_a_region_not_yet_tried(weighted):
    weighted.reset()
    weighted.emulators["us-central1"].fail("503")
    result, counts = spread(weighted, total=200)
    assert "us-central1" not in counts  # its failed attempts were all retried elsewhere
    assert {s.attempts for s in result.samples} <= {1, 2}


def test_weight_zero_drains_a_region_and_debug_config_shows_it(weighted):
    weighted.reset()
    weighted.update_config({"models": {"housing": {"weights": {"us-east4": 0}}}})
    weighted.wait_synced()
    _, counts = spread(weighted, total=300)
    assert counts["us-east4"] == 0 and weighted.emulators["us-east4"].received == []
    config = requests.get(weighted.plane.admin_url + "/debug/config", params={"node": "envoy-us-central1"},
                          timeout=5).json()
    assert config["models"]["housing"]["strategy"] == "weighted"
    assert config["models"]["housing"]["weights"]["us-east4"] == 0
    weighted.update_config({"models": {"housing": {"weights": WEIGHTS}}})
    weighted.wait_synced()


def test_weighted_ejected_region_gets_no_first_attempts():
    stack = Stack(regions=REGIONS, extra={"models": {"housing": {"strategy": "weighted", "weights": WEIGHTS}},
                                          "policy": {"outlier_detection": {"consecutive_5xx": 2,
                                                                           "base_ejection_time": "60s"}}})
    try:
        stack.emulators["us-east4"].fail("503")
        spread(stack, total=100, concurrency=1)  # enough for us-east4 to be ejected
        stack.emulators["us-east4"].clear()
        result, counts = spread(stack, total=200, concurrency=1)
        assert counts["us-east4"] == 0 and stack.emulators["us-east4"].received == []
        assert {s.attempts for s in result.samples} == {1}
    finally:
        stack.close()


def test_least_request_favours_the_region_that_answers_faster():
    stack = Stack(regions=("us-central1", "us-east4"), extra={"models": {"housing": {"strategy": "least_request"}}})
    try:
        stack.emulators["us-central1"].fail("slow", delay=0.2)
        _, counts = spread(stack, total=400, concurrency=16)
        # Envoy's least request samples two hosts with replacement (power of two choices): with two
        # regions the faster one gets at most 75% (the other 25% both samples are the slow one).
        # Even chance would be 50%; 0.7 failed now and then on a loaded machine (0.665).
        assert counts["us-east4"] / 400 > 0.62, counts
    finally:
        stack.close()


@pytest.fixture(scope="module")
def pinning():
    stack = Stack(regions=REGIONS, envoys=("us-central1", "us-east4"))
    yield stack
    stack.close()


def test_pinned_request_goes_to_that_region_only(pinning):
    pinning.reset()
    response = pinning.post("/v1/models/housing:predict", json={"instances": [1]},
                            headers={"x-vertex-pin-region": "europe-west4"})
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "europe-west4"
    assert "x-vertex-pin-region" not in pinning.emulators["europe-west4"].received[0].headers


def test_a_pinned_request_is_rewritten_at_its_route_as_an_attempt_would_be(pinning):
    """A region's own cluster has no per-attempt rewrite (no Lua state per cluster): the pinned
    route rewrites the path, keeping the verb and query, the host and the token as an attempt
    in that region would have them, for each kind of path the model is pinned on."""
    pinning.reset()
    east = pinning.emulators["us-east4"]
    for path, expected, query in [("/v1/models/churn:rawPredict?alt=json", "/endpoints/2003:rawPredict", "alt=json"),
                                  ("/v1/projects/p-e2e/locations/us-central1/endpoints/1001:predict",
                                   "/endpoints/2002:predict", ""),
                                  ("/predict?trace=1", "/endpoints/2002:predict", "trace=1")]:
        response = pinning.post(path, json={"instances": [1]}, headers={
            "x-vertex-pin-region": "us-east4", "authorization": "Bearer the-clients-own"})
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4", path
        seen = east.received[-1]
        assert (seen.path, seen.query) == ("/v1/projects/p-e2e/locations/us-east4" + expected, query)
        assert seen.headers["host"] == "us-east4-aiplatform.googleapis.com"
        assert seen.headers["authorization"].startswith("Bearer ") and "the-clients-own" not in seen.headers["authorization"]
        assert not any(h.lower().startswith(("x-envoy-", "x-vertex-")) for h in seen.headers), seen.headers
    assert not pinning.emulators["us-central1"].received
    pinning.emulators["europe-west4"].fail("503")
    failed = pinning.post("/predict", json={"instances": [1]}, headers={"x-vertex-pin-region": "europe-west4"})
    assert failed.status_code == 503 and failed.headers["x-envoy-attempt-count"] == "1"  # no failover
    assert pinning.emulators["us-central1"].received == []


@pytest.mark.parametrize("region", ["mars-north1", "europe-west4"])
def test_pinning_outside_what_the_operator_allows_is_a_json_400(pinning, region):
    pinning.reset()
    # us-east4's Envoy fails over only to us-central1: europe-west4 is excluded there
    response = pinning.post("/v1/models/housing:predict", region="us-east4", json={"instances": [1]},
                            headers={"x-vertex-pin-region": region})
    assert response.status_code == 400 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["allowed_regions"] == ["us-east4", "us-central1"]
    assert all(e.received == [] for e in pinning.emulators.values())


@pytest.fixture(scope="module")
def gemini():
    stack = Stack(regions=("us-central1", "us-east4"), extra={"models": {"gemini": {
        "publisher_model": "google/gemini-2.0-flash", "regions": ["us-central1", "us-east4"]}},
        "policy": {"outlier_detection": {"consecutive_5xx": 1000}}})
    yield stack
    stack.close()


def test_gemini_429_fails_over_with_sse_streaming_intact(gemini):
    gemini.reset()
    gemini.emulators["us-central1"].fail("429")
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    with gemini.post("/v1/models/gemini:streamGenerateContent?alt=sse", json=body, stream=True) as response:
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [c for c in response.iter_content(chunk_size=None) if c]
    events = [line for line in b"".join(chunks).decode().splitlines() if line.startswith("data: ")]
    assert len(chunks) >= 2 and len(events) >= 2
    json.loads(events[0][len("data: "):])  # each event is intact JSON
    seen = gemini.emulators["us-east4"].received[0]
    assert seen.path == "/v1/projects/p-e2e/locations/us-east4/publishers/google/models/gemini-2.0-flash:streamGenerateContent"
    assert seen.query == "alt=sse"


@pytest.mark.parametrize("verb", ["generateContent", "countTokens"])
def test_gemini_native_publisher_path_routes_the_same_way(gemini, verb):
    gemini.reset()
    body = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
    response = gemini.post(f"/v1/projects/any/locations/us-east4/publishers/google/models/gemini-2.0-flash:{verb}",
                           json=body)
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-central1"
    assert gemini.emulators["us-central1"].received[0].path.endswith(f"/models/gemini-2.0-flash:{verb}")
