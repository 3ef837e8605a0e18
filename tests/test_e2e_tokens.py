"""Access tokens end to end: real google-auth service-account credentials against a local
token endpoint, SDS to a real Envoy, injected on every attempt, never leaked."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import requests

from control_plane.lab.envoy_process import EnvoyProcess
from control_plane.lab.fake_oauth import FakeTokenServer, write_service_account_key
from control_plane.lab.harness import free_port, wait_for
from control_plane.lab.loadgen import load_until, run_load
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e


def authorization(emulator, index=-1):
    return emulator.received[index].headers.get("authorization", "")


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",),
                  extra={"policy": {"outlier_detection": {"consecutive_5xx": 1000}}})
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").reset()
        request.getfixturevalue("stack").token_server.fail(None)
    yield


def test_vertex_sees_the_token_not_the_clients(stack):
    response = stack.post("/predict", json={"instances": [1]}, headers={"authorization": "Bearer client-own"})
    assert response.status_code == 200
    assert authorization(stack.emulators["us-central1"]) == f"Bearer {stack.token_server.issued[-1]}"


def test_the_failover_attempt_carries_a_token_too(stack):
    stack.emulators["us-central1"].fail("503")
    assert stack.post("/predict", json={"instances": [1]}).headers["x-vertex-region"] == "us-east4"
    assert authorization(stack.emulators["us-east4"]) == f"Bearer {stack.token_server.issued[-1]}"


def test_a_thousand_requests_cost_no_grant(stack):
    grants = stack.token_server.grants
    result = asyncio.run(run_load(stack.url("/predict"), 1000, 16, b'{"instances": [1]}', deadline_s=60))
    assert len(result.samples) == 1000 and not result.errors
    assert stack.token_server.grants - grants <= 1  # at most a scheduled refresh


def test_failing_token_endpoint_keeps_the_valid_token_and_reports(stack):
    token = stack.token_server.issued[-1]
    stack.token_server.fail(503)
    stack.plane.loop.run(stack.plane.plane.tokens.refresh_now)  # the scheduled one is an hour away
    info = wait_for(lambda: (lambda d: d if d["last_error"] else None)(
        requests.get(stack.plane.admin_url + "/debug/tokens", timeout=5).json()["credentials"][0]),
        what="the refresh failure at /debug/tokens")
    assert info["state"] == "ok" and info["seconds_to_expiry"] > 3000  # the old token is still good
    assert "503" in info["last_error"] or "RefreshError" in info["last_error"]
    assert stack.post("/predict", json={"instances": [1]}).status_code == 200
    assert authorization(stack.emulators["us-central1"]) == f"Bearer {token}"
    metrics = requests.get(stack.plane.admin_url + "/metrics", timeout=5).text
    assert 'vertex_gateway_token_refreshes_total{credential="default",result="failed"}' in metrics


def test_the_token_never_leaks(stack, caplog):
    caplog.set_level(logging.DEBUG)
    stack.post("/predict", json={"instances": [1]})
    token = stack.token_server.issued[-1]
    envoy = stack.envoys["us-central1"]
    dumps = [envoy.admin("config_dump"), envoy.admin("config_dump?include_eds")]
    for path in ("/healthz", "/debug/clients", "/debug/regions", "/debug/tokens", "/metrics"):
        dumps.append(requests.get(stack.plane.admin_url + path, timeout=5).text)
    served = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-us-central1"},
                          timeout=5).text
    dumps.append(served)
    dumps.append(caplog.text)
    dumps.append(envoy.log_tail(10_000))
    for text in dumps:
        assert token not in text
    secret = json.loads(served)["resources"]["Secret"]
    assert secret and secret[0]["resource"] == "[redacted]"


def test_rotation_reaches_envoy_without_restart_or_failed_request():
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), token_lifetime=3)
    try:
        pid = stack.envoys["us-central1"].proc.pid
        first = stack.token_server.grants
        # bounded: until two more tokens were granted, at most 3000 requests or 30 s
        result = asyncio.run(load_until(stack.url("/predict"), lambda: stack.token_server.grants >= first + 2))
        assert result.samples and not result.errors
        seen = {r.headers["authorization"] for r in stack.emulators["us-central1"].received}
        assert len(seen) >= 2  # the emulator saw the next token
        assert stack.envoys["us-central1"].proc.pid == pid and stack.envoys["us-central1"].proc.poll() is None
    finally:
        stack.close()


def test_expired_token_without_replacement_degrades_health():
    stack = Stack(regions=("us-central1",), envoys=("us-central1",), token_lifetime=2)
    try:
        stack.token_server.fail(500)
        # (a Response is falsy when it is an error, so wait on the status, then read the body)
        wait_for(lambda: requests.get(stack.plane.admin_url + "/healthz", timeout=5).status_code == 503, 20,
                 what="/healthz degraded")
        health = requests.get(stack.plane.admin_url + "/healthz", timeout=5)
        assert health.json()["status"] == "degraded"
        assert "expired" in health.json()["reasons"][0]
        tokens = requests.get(stack.plane.admin_url + "/debug/tokens", timeout=5).json()["credentials"][0]
        assert tokens["state"] == "degraded" and tokens["last_error"]
        stack.token_server.fail(None)
        wait_for(lambda: requests.get(stack.plane.admin_url + "/healthz", timeout=5).status_code == 200, 20,
                 what="healthy again once a token arrives")
    finally:
        stack.close()


def test_envoy_serves_nothing_before_the_first_token(tmp_path):
    stack = Stack(regions=("us-central1",), envoys=())
    try:
        # a second credential whose token endpoint refuses: the config needs it for us-central1
        refusing = FakeTokenServer()
        stack.emulator_thread.call(refusing.start())
        refusing.fail(503)
        key = write_service_account_key(tmp_path / "other.json", refusing.token_uri)
        stack.update_config({"auth": {"profiles": {"other": {"credentials": f"service_account:{key}"}}},
                             "regions": {"us-central1": {"auth": "other"}}})
        envoy = EnvoyProcess("us-central1", stack.plane.xds_address, f"127.0.0.1:{free_port()}",
                             workdir=stack.dir).start()
        stack.envoys["us-central1"] = envoy
        wait_for(lambda: "waiting for the first access token" in json.dumps(
            requests.get(stack.plane.admin_url + "/debug/clients", timeout=5).json()), what="the wait reported")
        assert envoy.listen not in envoy.admin("listeners")  # no listener: clients are refused, not sent 401s
        refusing.fail(None)
        envoy.wait_ready()
        assert stack.post("/predict", json={"instances": [1]}).status_code == 200
        assert authorization(stack.emulators["us-central1"]) == f"Bearer {refusing.issued[-1]}"
        stack.emulator_thread.call(refusing.stop())
    finally:
        stack.close()


def test_regions_with_different_credentials_get_their_own_token(tmp_path):
    stack = Stack(regions=("us-central1", "us-east4"), envoys=())
    other = FakeTokenServer(prefix="ya29.east")
    try:
        stack.emulator_thread.call(other.start())
        key = write_service_account_key(tmp_path / "east.json", other.token_uri)
        stack.update_config({"auth": {"profiles": {"east": {"credentials": f"service_account:{key}"}}},
                             "regions": {"us-east4": {"auth": "east"}}})
        envoy = EnvoyProcess("us-central1", stack.plane.xds_address, f"127.0.0.1:{free_port()}",
                             workdir=stack.dir)
        stack.envoys["us-central1"] = envoy.start().wait_ready()
        assert stack.post("/predict", json={"instances": [1]}).status_code == 200
        assert authorization(stack.emulators["us-central1"]).startswith("Bearer ya29.fake")
        stack.emulators["us-central1"].fail("503")
        assert stack.post("/predict", json={"instances": [1]}).headers["x-vertex-region"] == "us-east4"
        assert authorization(stack.emulators["us-east4"]) == f"Bearer {other.issued[-1]}"
    finally:
        stack.emulator_thread.call(other.stop())
        stack.close()


def test_a_profile_still_waiting_for_its_token_holds_only_the_envoys_that_need_it(tmp_path):
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1", "us-east4"),
                  extra={"regions": {"us-central1": {"failover": []}, "us-east4": {"failover": []}}})
    refusing = FakeTokenServer()
    try:
        stack.emulator_thread.call(refusing.start())
        refusing.fail(503)
        key = write_service_account_key(tmp_path / "east.json", refusing.token_uri)
        # us-east4 moves to credentials whose token cannot be had yet; us-central1 is unaffected
        stack.update_config({"auth": {"profiles": {"east": {"credentials": f"service_account:{key}"}}},
                             "regions": {"us-east4": {"auth": "east"}},
                             "policy": {"timeout": "45s"}})
        wait_for(lambda: all(t["status"] == "SYNCED" for c in requests.get(
            stack.plane.admin_url + "/debug/clients", timeout=5).json()["clients"]
            if c["node_id"] == "envoy-us-central1" for t in c["types"].values()), what="us-central1 synced")
        east = next(c for c in requests.get(stack.plane.admin_url + "/debug/clients", timeout=5).json()["clients"]
                    if c["node_id"] == "envoy-us-east4")
        assert "waiting for the first access token" in east["error"]
        assert stack.post("/predict", region="us-east4", json={"instances": [1]}).status_code == 200  # old config
        refusing.fail(None)
        stack.plane.loop.run(stack.plane.plane.tokens.refresh_now)  # rather than wait out the backoff
        stack.wait_synced()
        answer = stack.post("/predict", region="us-east4", json={"instances": [1]})
        assert answer.status_code == 200, (answer.status_code, answer.text, answer.headers)
        assert authorization(stack.emulators["us-east4"]) == f"Bearer {refusing.issued[-1]}"
    finally:
        stack.emulator_thread.call(refusing.stop())
        stack.close()
