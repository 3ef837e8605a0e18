"""A region that stops answering costs clients (almost) nothing, through a real Envoy: active
health probes take it out before client requests find it, hedged idempotent verbs keep a slow
first attempt alive while the next region is tried, and streams have a first-byte deadline."""

from __future__ import annotations

import time

import pytest
import requests

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4", "europe-west4")
PROBED = {"interval": "0.2s", "timeout": "0.2s", "unhealthy_threshold": 2, "healthy_threshold": 1}


def predict(stack, verb="predict", **kwargs):
    kwargs.setdefault("json", {"instances": [{"x": 1}]})
    return stack.post(f"/v1/models/housing:{verb}", **kwargs)


def failed_probes(stack, region, model="housing") -> bool:
    clusters = stack.envoys["us-central1"].admin("clusters")
    return any(line.startswith(f"model/{model}@{region}::") and "health_flags::" in line and "failed_active_hc" in line
               for line in clusters.splitlines())


@pytest.fixture(scope="module")
def probed():
    stack = Stack(regions=REGIONS, extra={
        "policy": {"per_try_timeout": "2s", "num_retries": 2, "outlier_detection": {"consecutive_5xx": 1000}},
        "regions": {"us-central1": {"health_check": {"kind": "http", **PROBED}},
                    "us-east4": {"health_check": {"kind": "connect", **PROBED}}}})
    yield stack
    stack.close()


def test_a_dead_failover_region_is_skipped_without_a_client_request_finding_it(probed):
    probed.reset()
    probed.emulators["us-east4"].fail("down")  # refused: the connect probe fails
    try:
        wait_for(lambda: failed_probes(probed, "us-east4"), 10, what="us-east4 failing its probes")
        probed.emulators["us-central1"].fail("503")
        response = predict(probed)
        # us-central1 (unless an earlier test of this module left it ejected), then straight to
        # europe-west4: no attempt wasted on the dead region
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "europe-west4"
        assert response.headers["x-envoy-attempt-count"] in ("1", "2")
        assert probed.emulators["us-east4"].received == []
    finally:
        probed.reset()
        wait_for(lambda: not failed_probes(probed, "us-east4"), 10, what="us-east4 passing its probes again")


def test_a_hung_local_region_is_taken_out_by_http_probes_not_by_clients(probed):
    probed.reset()
    probed.emulators["us-central1"].fail("hang")  # accepts connections, never answers
    try:
        wait_for(lambda: failed_probes(probed, "us-central1"), 10, what="us-central1 failing its probes")
        started = time.monotonic()
        for _ in range(20):
            response = predict(probed)
            assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
            assert response.headers["x-envoy-attempt-count"] == "1"
        assert time.monotonic() - started < 2.0  # not one request waited for the hung region
        assert probed.emulators["us-central1"].received == [] and probed.emulators["us-central1"].probes > 0
    finally:
        probed.reset()
        wait_for(lambda: not failed_probes(probed, "us-central1"), 10, what="us-central1 passing its probes again")
    assert predict(probed).headers["x-vertex-region"] == "us-central1"


@pytest.fixture(scope="module")
def hedged():
    stack = Stack(regions=REGIONS, extra={
        "policy": {"per_try_timeout": "0.5s", "timeout": "10s", "num_retries": 2,
                   "first_byte_timeout": "0.5s", "outlier_detection": {"consecutive_5xx": 1000}},
        "models": {"housing": {"policy": {"hedge": True}}}})
    yield stack
    stack.close()


@pytest.mark.parametrize("verb,winner", [("predict", "us-central1"), ("explain", "europe-west4")])
def test_a_hedged_verb_keeps_the_slow_first_attempt_and_the_first_answer_wins(hedged, verb, winner):
    hedged.reset()
    hedged.emulators["us-central1"].fail("slow", delay=0.8)  # answers after the per-try timeout
    hedged.emulators["us-east4"].fail("slow", delay=1.5)
    started = time.monotonic()
    response = predict(hedged, verb)
    elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.headers["x-vertex-region"] == winner
    if verb == "predict":  # hedged: the local answer at 0.8 s wins over the remote one at 2.0 s
        assert elapsed < 1.4, elapsed
    else:  # explain is not hedged: each slow attempt is cancelled at 0.5 s, the third region answers
        assert elapsed >= 0.95, elapsed
    assert len(hedged.emulators["us-east4"].received) == 1  # the next region was tried either way


def test_a_stream_with_no_first_byte_in_time_goes_to_the_next_region(hedged):
    hedged.reset()
    hedged.emulators["us-central1"].fail("hang")
    started = time.monotonic()
    with hedged.post("/v1/models/housing:streamRawPredict", json={"instances": [1]}, stream=True) as response:
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
        assert b"".join(response.iter_content(chunk_size=None))
    assert time.monotonic() - started < 2.0


def test_a_stream_that_stalls_after_its_first_byte_ends_and_is_not_retried(hedged):
    hedged.reset()
    hedged.emulators["us-central1"].fail("stall")
    started = time.monotonic()
    received = b""
    with hedged.post("/v1/models/housing:streamRawPredict", json={"instances": [1]}, stream=True) as response:
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-central1"
        with pytest.raises(requests.RequestException):  # cut, never completed from elsewhere
            for chunk in response.iter_content(chunk_size=None):
                received += chunk
    assert received.startswith(b"data: ") and received.count(b"data: ") == 1  # the first chunk only
    assert time.monotonic() - started < 3.0  # ended by the 0.5 s deadline, not left hanging
    assert hedged.emulators["us-east4"].received == []


def test_a_least_request_spread_stops_sending_first_attempts_to_a_region_failing_its_probes():
    probe = {"health_check": {"kind": "connect", **PROBED}}
    with Stack(regions=("us-central1", "us-east4"), extra={
            "regions": {"us-central1": probe, "us-east4": probe},
            "policy": {"outlier_detection": {"consecutive_5xx": 1000}},
            "models": {"housing": {"strategy": "least_request"}}}) as stack:
        stack.emulators["us-east4"].fail("down")
        east = f"model/housing::127.0.0.1:{stack.emulators['us-east4'].port}::health_flags::"
        wait_for(lambda: any(line.startswith(east) and "failed_active_hc" in line
                             for line in stack.envoys["us-central1"].admin("clusters").splitlines()),
                 10, what="us-east4 failing its probes in the spread")
        for _ in range(20):
            response = predict(stack)
            assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-central1"
            assert response.headers["x-envoy-attempt-count"] == "1"  # no first attempt to the dead region


@pytest.mark.parametrize("connect_timeout,answered", [(None, True), ("0.3s", False)])
def test_a_hedge_to_a_region_slow_to_shake_hands_is_answered_there(tmp_path, connect_timeout, answered):
    """A hedge delay (per_try_timeout) of 0.3 s no longer makes the connect timeout 0.3 s: the failover
    region's first TLS handshake takes 0.7 s (cold connections, a loaded host, a far region) and the
    hedged attempt still gets through. With the connect timeout at 0.3 s (what per_try_timeout used to
    set) the attempt fails to connect and the request waits out `timeout` behind the hung region."""
    import ssl

    import trustme

    authority = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("us-east4-aiplatform.googleapis.com").configure_cert(context)
    handshakes = []

    def slow_first_handshake(_sock, _server_name, _context):
        handshakes.append(time.monotonic())
        if len(handshakes) == 1:
            time.sleep(0.7)  # blocks the emulators' thread: the hung region does not mind

    context.sni_callback = slow_first_handshake
    policy = {"per_try_timeout": "0.3s", "timeout": "3s", "num_retries": 1, "hedge": True,
              "outlier_detection": {"consecutive_5xx": 1000}}
    if connect_timeout:
        policy["connect_timeout"] = connect_timeout
    stack = Stack(regions=("us-central1", "us-east4"), extra={"policy": policy}, tls={"us-east4": context},
                  ca_file=str(ca_file))
    try:
        stack.emulators["us-central1"].fail("hang")
        started = time.monotonic()
        response = predict(stack)
        elapsed = time.monotonic() - started
        assert handshakes, "the hedged attempt never reached us-east4"
        if answered:
            assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
            assert 0.95 <= elapsed < 2.9, elapsed  # 0.3 s hedge delay + 0.7 s handshake + the answer, before `timeout`
        else:
            assert response.status_code == 504 and elapsed >= 2.9, (response.status_code, elapsed)
            assert stack.emulators["us-east4"].received == []
    finally:
        stack.close()
