"""Custom backends end to end: real Envoys, Vertex emulators that fail on command, and a second
kind of upstream (control_plane/lab/custom_emulator.py) that accepts only its own paths and its own
credential - a header value from a file, or a Google ID token from the local token endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import pytest
import requests

from control_plane.lab.custom_emulator import CustomBackendEmulator, ExpectHeader, ExpectIdToken
from control_plane.lab.emulator import EmulatorThread
from control_plane.lab.harness import wait_for
from control_plane.lab.loadgen import load_until
from control_plane.lab.stack import DELETE, ENDPOINT_IDS, PROJECT, Stack

pytestmark = pytest.mark.e2e

AUDIENCE = "https://cloudrun-fallback.example"
HOUSING_PATH = "/openai/v1/completions"  # fixed: no {verb}
CHURN_PATH = "/models/{model}/{verb}"  # a template


class Backends:
    """Two custom backends on their own loop, and the regions.yaml entries that name them."""

    def __init__(self, tmp_path_factory, failover=("fallback", "us-east4", "cloudrun")):
        directory = tmp_path_factory.mktemp("custom")
        self.api_key = f"sk-fallback-{secrets.token_urlsafe(12)}"
        self.key_file = directory / "fallback.key"
        self.key_file.write_text(self.api_key + "\n")
        self.fallback = CustomBackendEmulator("fallback", [HOUSING_PATH],
                                              ExpectHeader("authorization", f"Bearer {self.api_key}"))
        # the ID token's issuer key is the stack's token server's: set once the stack exists
        self.cloudrun = CustomBackendEmulator("cloudrun", ["/models/churn/predict", "/models/churn/rawPredict"])
        self.thread = EmulatorThread([self.fallback, self.cloudrun]).__enter__()
        self.extra = {
            "policy": {"outlier_detection": {"consecutive_5xx": 1000}},
            "regions": {
                "us-central1": {"failover": list(failover)},
                "fallback": {"kind": "custom", "address": "127.0.0.1", "port": self.fallback.port, "tls": False,
                             "host": "fallback.internal",
                             "credential": {"type": "header", "file": str(self.key_file), "prefix": "Bearer "}},
                "cloudrun": {"kind": "custom", "address": "127.0.0.1", "port": self.cloudrun.port, "tls": False,
                             "host": "cloudrun-fallback.example",
                             "credential": {"type": "id_token", "audience": AUDIENCE}},
            },
            "models": {"housing": {"endpoints": {"fallback": HOUSING_PATH}},
                       "churn": {"endpoints": {"cloudrun": CHURN_PATH}}},
        }

    def expect_id_tokens_from(self, stack: Stack) -> None:
        self.cloudrun.expect = ExpectIdToken(stack.token_server.public_key_pem, AUDIENCE)

    def reset(self) -> None:
        for backend in (self.fallback, self.cloudrun):
            backend.fail(None)
            backend.clear()

    def close(self) -> None:
        self.thread.__exit__(None, None, None)


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    backends = Backends(tmp_path_factory)
    yield backends
    backends.close()


@pytest.fixture(scope="module")
def stack(backends):
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra=backends.extra)
    backends.expect_id_tokens_from(stack)
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").reset()
        request.getfixturevalue("backends").reset()
    yield


def test_vertex_regions_fail_and_the_custom_backend_answers_with_its_path_and_key(stack, backends):
    # housing's chain from us-central1: us-central1 -> fallback -> us-east4
    stack.emulators["us-central1"].fail("429")
    response = stack.post("/v1/models/housing:predict?trace=1", json={"prompt": "hi"},
                          headers={"authorization": "Bearer client-own"})
    assert response.status_code == 200, response.text
    assert response.headers["x-vertex-region"] == "fallback"
    assert response.headers["x-envoy-attempt-count"] == "2"
    assert response.json()["backend"] == "fallback"
    (seen,) = backends.fallback.received
    assert (seen.path, seen.query, seen.host) == (HOUSING_PATH, "trace=1", "fallback.internal")
    assert seen.headers["authorization"] == f"Bearer {backends.api_key}"  # its own key, not a Google token
    assert json.loads(seen.body) == {"prompt": "hi"}
    assert not any(h.startswith("x-vertex-") for h in seen.headers)  # the rewrite's helpers stay inside


def test_a_healthy_vertex_region_never_calls_the_custom_backend(stack, backends):
    response = stack.post("/predict", json={"instances": [1]})
    assert response.headers["x-vertex-region"] == "us-central1"
    assert not backends.fallback.received


def test_the_verb_survives_a_custom_backend_with_a_fixed_path_in_the_middle_of_the_chain(stack, backends):
    # us-central1 -> fallback (a fixed path, no verb in it) -> us-east4: the third attempt must
    # still carry the client's verb and query to Vertex.
    stack.emulators["us-central1"].fail("503")
    backends.fallback.fail(503)
    response = stack.post("/v1/models/housing:rawPredict?alt=sse", json={"instances": [1]})
    assert response.status_code == 200, response.text
    assert response.headers["x-vertex-region"] == "us-east4"
    assert response.headers["x-envoy-attempt-count"] == "3"
    assert backends.fallback.received[-1].path == HOUSING_PATH
    last = stack.emulators["us-east4"].received[-1]
    assert last.path == f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/{ENDPOINT_IDS['us-east4']}:rawPredict"
    assert last.query == "alt=sse"
    assert last.headers["authorization"] == f"Bearer {stack.token_server.issued[-1]}"  # the Google token again


def test_an_id_token_for_the_audience_reaches_the_cloud_run_backend(stack, backends):
    # churn's chain from us-central1: us-central1 -> us-east4 -> cloudrun (last resort)
    stack.emulators["us-central1"].fail("503")
    stack.emulators["us-east4"].fail("reset")
    response = stack.post("/v1/models/churn:rawPredict", json={"instances": [1]})
    assert response.status_code == 200, response.text
    assert response.headers["x-vertex-region"] == "cloudrun"
    assert response.headers["x-envoy-attempt-count"] == "3"
    (seen,) = backends.cloudrun.received
    assert seen.path == "/models/churn/rawPredict" and seen.host == "cloudrun-fallback.example"
    assert seen.id_token_claims["aud"] == AUDIENCE  # verified with the issuer's key
    assert seen.headers["authorization"] == f"Bearer {stack.token_server.id_tokens[-1]}"
    assert stack.token_server.audiences[-1] == AUDIENCE


def test_a_pin_reaches_a_custom_backend_directly(stack, backends):
    response = stack.post("/v1/models/churn:predict", json={"instances": [1]},
                          headers={"x-vertex-pin-region": "cloudrun"})
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "cloudrun"
    assert backends.cloudrun.received[-1].path == "/models/churn/predict"
    assert not stack.emulators["us-central1"].received


def test_a_custom_backend_refusing_its_credential_is_not_retried_as_if_down(stack, backends):
    # a 401 is returned as is, like any 4xx other than 429
    stack.emulators["us-central1"].fail("503")
    stack.emulators["us-east4"].fail("503")
    backends.fallback.fail(401)
    response = stack.post("/predict", json={"instances": [1]})
    assert response.status_code == 401 and response.headers["x-vertex-region"] == "fallback"


def test_debug_config_metrics_and_tokens_show_custom_backends(stack):
    config = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-us-central1"},
                          timeout=5).json()
    housing = config["models"]["housing"]
    assert housing["regions"] == ["us-central1", "fallback", "us-east4"]
    assert housing["upstreams"]["fallback"] == {
        "kind": "custom", "address": "127.0.0.1", "port": stack.config["regions"]["fallback"]["port"],
        "tls": False, "host": "fallback.internal", "path": HOUSING_PATH, "credential": "header authorization"}
    assert housing["upstreams"]["us-east4"]["kind"] == "vertex"
    assert config["models"]["churn"]["upstreams"]["cloudrun"]["credential"] == f"id_token for {AUDIENCE}"
    metrics = requests.get(stack.plane.admin_url + "/metrics", timeout=5).text
    assert 'vertex_gateway_backends{backend="fallback",credential="header",kind="custom"} 1.0' in metrics
    assert 'vertex_gateway_backends{backend="us-east4",credential="access_token",kind="vertex"} 1.0' in metrics
    assert 'vertex_gateway_token_refreshes_total{credential="backend/cloudrun",result="ok"}' in metrics
    tokens = requests.get(stack.plane.admin_url + "/debug/tokens", timeout=5).json()["credentials"]
    kinds = {t["profile"]: (t["kind"], t["state"]) for t in tokens}
    assert kinds == {"default": ("access_token", "ok"), "backend/cloudrun": ("id_token", "ok"),
                     "backend/fallback": ("header", "ok")}


def test_no_credential_leaks(stack, backends, caplog):
    caplog.set_level(logging.DEBUG)
    stack.emulators["us-central1"].fail("503")
    stack.emulators["us-east4"].fail("503")
    assert stack.post("/predict", json={"instances": [1]}).status_code == 200
    assert stack.post("/v1/models/churn:predict", json={"instances": [1]}).status_code == 200
    id_token = stack.token_server.id_tokens[-1]
    envoy = stack.envoys["us-central1"]
    texts = [envoy.admin("config_dump"), envoy.admin("config_dump?include_eds"), caplog.text, envoy.log_tail(10_000)]
    for path in ("/healthz", "/debug/clients", "/debug/regions", "/debug/tokens", "/metrics"):
        texts.append(requests.get(stack.plane.admin_url + path, timeout=5).text)
    served = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-us-central1"}, timeout=5)
    texts.append(served.text)
    for text in texts:
        assert backends.api_key not in text
        assert id_token not in text and id_token.split(".")[1] not in text
    secrets_served = {s["name"]: s["resource"] for s in served.json()["resources"]["Secret"]}
    assert secrets_served == {"backend/cloudrun": "[redacted]", "backend/fallback": "[redacted]",
                              "token/default": "[redacted]"}


def test_credential_none_sends_nothing(stack, backends):
    stack.update_config({"regions": {"fallback": {"credential": DELETE}}})  # the default is none
    stack.update_config({"regions": {"fallback": {"credential": {"type": "none"}}}})  # said explicitly
    backends.fallback.expect = None
    try:
        stack.wait_synced()
        stack.emulators["us-central1"].fail("503")
        stack.emulators["us-east4"].fail("503")
        response = stack.post("/predict", json={"instances": [1]},
                              headers={"authorization": "Bearer client-own", "x-vertex-credential": "default"})
        assert response.status_code == 200, response.text
        seen = backends.fallback.received[-1]
        assert "authorization" not in seen.headers  # neither the client's nor the gateway's Google token
    finally:
        stack.update_config({"regions": {"fallback": {"credential": {"type": "header", "file": str(backends.key_file),
                                                                     "prefix": "Bearer "}}}})
        backends.fallback.expect = ExpectHeader("authorization", f"Bearer {backends.api_key}")
        stack.wait_synced()


def test_the_id_token_is_refreshed_before_it_expires(tmp_path_factory):
    backends = Backends(tmp_path_factory)
    stack = None
    try:
        # tokens live 3 s: the backend rejects an expired one, so a token not refreshed in time fails requests
        stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra=backends.extra,
                      token_lifetime=3)
        backends.expect_id_tokens_from(stack)
        first = len(stack.token_server.id_tokens)
        result = asyncio.run(load_until(stack.url("/v1/models/churn:predict"),
                                        lambda: len(stack.token_server.id_tokens) >= first + 2, limit=2000,
                                        headers={"x-vertex-pin-region": "cloudrun"}))
        assert len(stack.token_server.id_tokens) >= first + 2, "no refresh within the deadline"
        assert result.samples and not result.errors
        assert {r.status for r in backends.cloudrun.received} == {200}
        assert len({r.headers["authorization"] for r in backends.cloudrun.received}) >= 2  # the next token arrived
    finally:
        if stack is not None:
            stack.close()
        backends.close()


def test_a_rotated_key_file_is_sent_after_sighup_reread(stack, backends):
    new_key = f"sk-rotated-{secrets.token_urlsafe(12)}"
    backends.key_file.write_text(new_key)
    try:
        backends.fallback.expect = ExpectHeader("authorization", f"Bearer {new_key}")
        # what SIGHUP does: re-read credential files now
        stack.plane.loop.run(lambda: stack.plane.plane.tokens.refresh_now(reload_credentials=True))
        stack.emulators["us-central1"].fail("503")
        wait_for(lambda: stack.post("/predict", json={"instances": [1]}).status_code == 200,
                 what="the rotated key in use")
        assert backends.fallback.received[-1].headers["authorization"] == f"Bearer {new_key}"
    finally:
        backends.key_file.write_text(backends.api_key)
        backends.fallback.expect = ExpectHeader("authorization", f"Bearer {backends.api_key}")
        stack.plane.loop.run(lambda: stack.plane.plane.tokens.refresh_now(reload_credentials=True))
        stack.emulators["us-central1"].fail("503")
        wait_for(lambda: stack.post("/predict", json={"instances": [1]}).status_code == 200,
                 what="the original key back in use")


def test_a_weighted_spread_can_name_a_custom_backend(stack, backends):
    stack.update_config({"models": {"churn": {"strategy": "weighted",
                                              "weights": {"us-central1": 1, "us-east4": 0, "cloudrun": 1}}}})
    try:
        stack.wait_synced()
        answered = [stack.post("/v1/models/churn:predict", json={"instances": [1]}).headers["x-vertex-region"]
                    for _ in range(20)]
        assert set(answered) == {"us-central1", "cloudrun"}  # round robin over weight 1:1, us-east4 drained
        stack.emulators["us-central1"].fail("503")
        answered = [stack.post("/v1/models/churn:predict", json={"instances": [1]}) for _ in range(6)]
        assert all(r.status_code == 200 and r.headers["x-vertex-region"] == "cloudrun" for r in answered)
        assert {r.path for r in backends.cloudrun.received} == {"/models/churn/predict"}
    finally:
        stack.update_config({"models": {"churn": {"strategy": DELETE, "weights": DELETE}}})
        stack.wait_synced()


def test_tls_to_a_custom_backend_uses_its_host_for_sni_and_the_certificate(tmp_path_factory):
    import ssl

    import trustme

    authority = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    sni: list[str] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("vllm.internal.example").configure_cert(context)
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    backend = CustomBackendEmulator("gke", ["/v1/completions"], ssl_context=context)
    thread = EmulatorThread([backend]).__enter__()
    stack = None
    try:
        stack = Stack(regions=("us-central1",), envoys=("us-central1",), extra={
            "regions": {"us-central1": {"failover": ["gke"]},
                        "gke": {"kind": "custom", "address": "127.0.0.1", "port": backend.port,
                                "host": "vllm.internal.example", "ca_file": str(ca_file)}},
            "models": {"housing": {"endpoints": {"gke": "/v1/completions"}}}})
        stack.emulators["us-central1"].fail("503")
        response = stack.post("/predict", json={"instances": [1]})
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "gke"
        assert sni == ["vllm.internal.example"]
        assert backend.received[-1].host == "vllm.internal.example"
        assert "authorization" not in backend.received[-1].headers  # credential none by default
    finally:
        if stack is not None:
            stack.close()
        thread.__exit__(None, None, None)


def test_a_missing_key_file_holds_the_envoy_until_it_is_there(tmp_path_factory):
    from control_plane.lab.envoy_process import EnvoyProcess
    from control_plane.lab.harness import free_port

    backends = Backends(tmp_path_factory)
    backends.key_file.unlink()  # not there yet: an operator forgot to mount the secret
    stack = None
    try:
        stack = Stack(regions=("us-central1", "us-east4"), envoys=(), extra=backends.extra)
        backends.expect_id_tokens_from(stack)
        envoy = EnvoyProcess("us-central1", stack.plane.xds_address, f"127.0.0.1:{free_port()}",
                             workdir=stack.dir).start()
        stack.envoys["us-central1"] = envoy
        wait_for(lambda: "backend/fallback" in json.dumps(
            requests.get(stack.plane.admin_url + "/debug/clients", timeout=5).json()), what="the wait reported")
        assert envoy.listen not in envoy.admin("listeners")  # refused, never served without the credential
        tokens = requests.get(stack.plane.admin_url + "/debug/tokens", timeout=5).json()["credentials"]
        fallback = next(t for t in tokens if t["profile"] == "backend/fallback")
        assert fallback["state"] == "pending" and str(backends.key_file) in fallback["last_error"]
        backends.key_file.write_text(backends.api_key)
        stack.plane.loop.run(lambda: stack.plane.plane.tokens.refresh_now(reload_credentials=True))  # SIGHUP
        envoy.wait_ready()
        stack.emulators["us-central1"].fail("503")
        response = stack.post("/predict", json={"instances": [1]})
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "fallback"
    finally:
        if stack is not None:
            stack.close()
        backends.close()


def test_access_token_only_when_asked_for(stack, backends):
    stack.update_config({"regions": {"fallback": {"credential": DELETE}}})
    stack.update_config({"regions": {"fallback": {"credential": {"type": "access_token"}}}})
    backends.fallback.expect = None
    try:
        stack.wait_synced()
        stack.emulators["us-central1"].fail("503")
        response = stack.post("/predict", json={"instances": [1]})
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "fallback"
        assert backends.fallback.received[-1].headers["authorization"] == f"Bearer {stack.token_server.issued[-1]}"
    finally:
        stack.update_config({"regions": {"fallback": {"credential": DELETE}}})
        stack.update_config({"regions": {"fallback": {"credential": {"type": "header", "file": str(backends.key_file),
                                                                     "prefix": "Bearer "}}}})
        backends.fallback.expect = ExpectHeader("authorization", f"Bearer {backends.api_key}")
        stack.wait_synced()
