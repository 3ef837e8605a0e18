"""Cross-region failover through a real Envoy: each failure mode of the local region, the
three-region chain, ejection and return, concurrency, bodies, streams and policy overrides."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import PROJECT, Stack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4", "europe-west4")
# Ejection is tested on its own stacks below; here a failing region is never ejected, so
# every test starts with the local region taking the first attempt.
NO_EJECTION = {"policy": {"timeout": "10s", "per_try_timeout": "1s", "num_retries": 2,
                          "outlier_detection": {"consecutive_5xx": 1000}},
               "models": {"churn": {"policy": {"num_retries": 0, "max_request_bytes": 1048576}}}}


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=REGIONS, envoys=("us-central1",), extra=NO_EJECTION)
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").reset()
    yield


def predict(stack, model="housing", **kwargs):
    kwargs.setdefault("json", {"instances": [{"x": 1}]})
    return stack.post(f"/v1/models/{model}:predict", **kwargs)


@pytest.mark.parametrize("mode", ["503", "500", "502", "504", "429", "reset", "down", "hang"])
def test_each_local_failure_is_answered_by_the_next_region(stack, mode):
    local, remote = stack.emulators["us-central1"], stack.emulators["us-east4"]
    body = json.dumps({"instances": [{"mode": mode}]}).encode()
    local.fail(mode)
    response = stack.post("/v1/models/housing:predict", data=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["x-vertex-region"] == "us-east4"
    assert response.headers["x-envoy-attempt-count"] == "2"
    seen = remote.received[0]
    assert seen.path == f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/2002:predict"
    assert seen.host == "us-east4-aiplatform.googleapis.com"
    assert seen.body_sha256 == hashlib.sha256(body).hexdigest()
    assert stack.emulators["europe-west4"].received == []


def test_bad_request_is_returned_as_is_never_failed_over(stack):
    stack.emulators["us-central1"].fail("status", status=400)
    response = predict(stack)
    assert response.status_code == 400
    assert response.headers["x-vertex-region"] == "us-central1"
    assert response.headers["x-envoy-attempt-count"] == "1"
    assert stack.emulators["us-east4"].received == []


def test_three_region_chain_is_followed_in_order(stack):
    stack.emulators["us-central1"].fail("503")
    stack.emulators["us-east4"].fail("429")
    response = predict(stack)
    assert response.status_code == 200
    assert response.headers["x-vertex-region"] == "europe-west4"
    assert response.headers["x-envoy-attempt-count"] == "3"
    assert [len(e.received) for e in stack.emulators.values()] == [1, 1, 1]


def test_every_region_failing_returns_the_last_regions_answer(stack):
    for region, emulator in stack.emulators.items():
        emulator.fail("503")
    response = predict(stack)
    assert response.status_code == 503
    assert response.headers["x-vertex-region"] == "europe-west4"
    assert response.json()["error"]["status"] == "UNAVAILABLE"  # Vertex's body, passed through


def test_every_region_hanging_ends_within_the_timeout_as_json(stack):
    for emulator in stack.emulators.values():
        emulator.fail("hang")
    response = predict(stack, timeout=15)
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == 504
    assert response.elapsed.total_seconds() < 10


def test_64_concurrent_failovers_are_all_admitted(stack):
    stack.emulators["us-central1"].fail("503")
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda _: predict(stack), range(64)))
    assert [r.status_code for r in responses] == [200] * 64
    assert {r.headers["x-vertex-region"] for r in responses} == {"us-east4"}


def test_a_large_body_is_retried_intact(stack):
    body = os.urandom(5 * 1024 * 1024)
    stack.emulators["us-central1"].fail("503")
    response = stack.post("/v1/models/housing:rawPredict", data=body)
    assert response.status_code == 200 and response.content == body
    assert response.headers["x-vertex-region"] == "us-east4"


def test_a_body_over_the_limit_gets_a_json_413_and_is_not_forwarded(stack):
    response = stack.post("/v1/models/churn:rawPredict", data=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "max_request_bytes" in response.json()["error"]["message"]
    assert stack.emulators["us-central1"].received == []


def test_streaming_fails_over_before_the_first_byte(stack):
    stack.emulators["us-central1"].fail("503")
    with stack.post("/v1/models/housing:streamRawPredict", json={"instances": [1]}, stream=True) as response:
        chunks = [c for c in response.iter_content(chunk_size=None) if c]
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
    assert len(chunks) >= 2


def test_streaming_hang_before_the_first_byte_fails_over(stack):
    stack.emulators["us-central1"].fail("hang")
    with stack.post("/v1/models/housing:streamRawPredict", json={"instances": [1]}, stream=True) as response:
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
        assert b"".join(response.iter_content(chunk_size=None))


def test_a_stream_that_started_is_never_retried_elsewhere(stack):
    local = stack.emulators["us-central1"]
    with stack.post("/v1/models/housing:streamRawPredict", json={"instances": [1]}, stream=True) as response:
        chunks = response.iter_content(chunk_size=None)
        assert next(chunks)  # the first byte has reached the client
        local.set_down_threadsafe(True)  # the region dies mid-stream
        try:
            for _ in chunks:
                pass
        except requests.RequestException:
            pass  # a cut stream is what the client should see; a replay from elsewhere is not
    assert response.headers["x-envoy-attempt-count"] == "1"
    assert stack.emulators["us-east4"].received == []


def test_model_policy_override_is_honoured(stack):
    stack.emulators["us-central1"].fail("503")
    response = predict(stack, model="churn")  # churn: num_retries 0
    assert response.status_code == 503 and response.headers["x-envoy-attempt-count"] == "1"


def test_region_policy_override_is_honoured(stack):
    stack.update_config({"regions": {"us-central1": {"policy": {"retry_on": ["connect-failure"]}}}})
    try:
        stack.wait_synced()
        stack.emulators["us-central1"].fail("503")
        wait_for(lambda: predict(stack).status_code == 503, what="the region's retry_on in force")
        stack.emulators["us-central1"].fail("down")
        assert predict(stack).headers["x-vertex-region"] == "us-east4"
    finally:
        stack.emulators["us-central1"].fail("none")
        stack.update_config({"regions": {"us-central1": {"policy": None}}})
        stack.wait_synced()


def test_clients_cannot_change_retries_or_timeouts(stack):
    stack.emulators["us-central1"].fail("503")
    response = predict(stack, headers={"x-envoy-max-retries": "0", "x-envoy-retry-on": "",
                                       "x-envoy-upstream-rq-timeout-ms": "1",
                                       "x-envoy-upstream-rq-per-try-timeout-ms": "1"})
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
    assert not any(h.startswith("x-envoy-") for h in stack.emulators["us-east4"].received[0].headers)


# --------------------------------------------------------------------------- ejection


def ejection_stack(**outlier):
    detection = {"consecutive_5xx": 3, "interval": "500ms", "base_ejection_time": "2s", **outlier}
    return Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",),
                 extra={"policy": {"per_try_timeout": "1s", "outlier_detection": detection}})


@pytest.mark.parametrize("mode,eject_on_429", [("503", True), ("429", True), ("reset", True), ("down", True),
                                               ("hang", True), ("503", False)])
def test_a_failing_region_is_ejected_then_traffic_returns(mode, eject_on_429):
    stack = ejection_stack(eject_on_429=eject_on_429)
    try:
        local = stack.emulators["us-central1"]
        local.fail(mode)
        for _ in range(3):
            assert predict(stack).headers["x-envoy-attempt-count"] == "2"
        # ejected: new requests go straight to the healthy region, no wasted first attempt
        direct = [predict(stack) for _ in range(10)]
        assert {(r.headers["x-vertex-region"], r.headers["x-envoy-attempt-count"]) for r in direct} == {("us-east4", "1")}
        # a first attempt sent elsewhere than the region the route rewrote for is rewritten per attempt
        seen = stack.emulators["us-east4"].received[-1]
        assert (seen.path, seen.host) == (f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/2002:predict",
                                          "us-east4-aiplatform.googleapis.com")
        assert len(local.received) == (0 if mode == "down" else 3)
        local.fail("none")
        wait_for(lambda: predict(stack).headers["x-vertex-region"] == "us-central1", 20,
                 what="traffic back in the local region after base_ejection_time")
    finally:
        stack.close()


def test_429_ejection_can_be_turned_off():
    stack = ejection_stack(eject_on_429=False)
    try:
        stack.emulators["us-central1"].fail("429")
        responses = [predict(stack) for _ in range(6)]
        assert {r.headers["x-envoy-attempt-count"] for r in responses} == {"2"}  # local tried every time
        assert len(stack.emulators["us-central1"].received) == 6
    finally:
        stack.close()


def test_every_attempt_carries_its_own_regions_path_and_host_in_whatever_order_regions_are_tried():
    """The route rewrites for the local region and only its first attempt there skips the
    per-attempt rewrite: an attempt that comes back to it after another region's is rewritten."""
    stack = ejection_stack(base_ejection_time="60s")
    try:
        local, remote = stack.emulators["us-central1"], stack.emulators["us-east4"]
        local.fail("503")
        for _ in range(3):
            predict(stack)
        wait_for(lambda: predict(stack).headers["x-envoy-attempt-count"] == "1", 10, what="the local region ejected")
        local.fail("none")  # still ejected for a while: first attempts go to us-east4, which now fails
        remote.fail("503")
        answers = [predict(stack) for _ in range(6)]
        # some answered by the local region on a second attempt, after a first in us-east4 (Envoy
        # may also retry an ejected-only chain in us-east4, or, both ejected, start locally)
        assert ("us-central1", "2") in [(r.headers["x-vertex-region"], r.headers["x-envoy-attempt-count"])
                                        for r in answers]
        for region, emulator in stack.emulators.items():
            endpoint = {"us-central1": 1001, "us-east4": 2002}[region]
            assert {(seen.path, seen.host) for seen in emulator.received} == {
                (f"/v1/projects/{PROJECT}/locations/{region}/endpoints/{endpoint}:predict",
                 f"{region}-aiplatform.googleapis.com")}
    finally:
        stack.close()
