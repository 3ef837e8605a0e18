"""First-attempt routing through a real Envoy programmed over ADS, against the Vertex emulator."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import requests

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import PROJECT, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=["sotw", "delta"])
def stack(request):
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1", "us-east4"),
                  delta=request.param == "delta")
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def clean(stack):
    stack.reset()
    yield


def only_request(emulator):
    wait_for(lambda: len(emulator.received) == 1, what="one request at the emulator")
    return emulator.received[0]


def test_model_path_goes_to_the_local_region_with_its_path_and_host(stack):
    body = json.dumps({"instances": [{"x": 1}, {"x": 2}]}).encode()
    response = stack.post("/v1/models/housing:predict", data=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["x-vertex-region"] == "us-central1"
    assert response.headers["x-envoy-attempt-count"] == "1"
    assert len(response.json()["predictions"]) == 2
    seen = only_request(stack.emulators["us-central1"])
    assert seen.path == f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/1001:predict"
    assert seen.host == "us-central1-aiplatform.googleapis.com"
    assert seen.body_sha256 == hashlib.sha256(body).hexdigest()
    assert stack.emulators["us-east4"].received == []


def test_each_envoy_serves_its_own_region(stack):
    response = stack.post("/v1/models/housing:predict", region="us-east4", json={"instances": [1]})
    assert response.headers["x-vertex-region"] == "us-east4"
    seen = only_request(stack.emulators["us-east4"])
    assert seen.path == f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/2002:predict"
    assert seen.host == "us-east4-aiplatform.googleapis.com"


def test_predict_shortcut_uses_the_default_model(stack):
    response = stack.post("/predict", json={"instances": [1]})
    assert response.status_code == 200
    assert only_request(stack.emulators["us-central1"]).path.endswith("/endpoints/1001:predict")


def test_vertex_native_path_with_a_known_id_from_any_region(stack):
    # the SDK pointed at the gateway sends its own region's path; the local region answers
    response = stack.post(f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/2003:rawPredict",
                          data=b"raw bytes \x00\x01", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.content == b"raw bytes \x00\x01"  # rawPredict echoes: body unchanged both ways
    seen = only_request(stack.emulators["us-central1"])
    assert seen.path == f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/1002:rawPredict"


def test_query_string_is_kept(stack):
    stack.post("/v1/models/churn:explain?alt=json&x=1", json={"instances": [1]})
    seen = only_request(stack.emulators["us-central1"])
    assert seen.path.endswith("/endpoints/1002:explain") and seen.query == "alt=json&x=1"


def test_large_body_arrives_unchanged(stack):
    body = os.urandom(3 * 1024 * 1024)
    response = stack.post("/v1/models/housing:rawPredict", data=body)
    assert response.status_code == 200 and response.content == body


def test_streaming_verb_is_streamed(stack):
    with stack.post("/v1/models/housing:streamRawPredict", json={"instances": [1]}, stream=True) as response:
        assert response.status_code == 200
        chunks = [c for c in response.iter_content(chunk_size=None) if c]
    assert len(chunks) >= 2  # arrived as the emulator sent them, not buffered into one


def test_client_authorization_is_never_forwarded(stack):
    stack.post("/predict", json={"instances": [1]}, headers={"authorization": "Bearer client-secret"})
    assert "client-secret" not in json.dumps(only_request(stack.emulators["us-central1"]).headers)


def test_client_cannot_inject_the_internal_rewrite_headers(stack):
    response = stack.post("/predict", json={"instances": [1]}, headers={
        "x-vertex-endpoint-path": "/v1/projects/evil/locations/x/endpoints/6", "x-vertex-host": "evil.example"})
    assert response.status_code == 200
    seen = only_request(stack.emulators["us-central1"])
    assert seen.host == "us-central1-aiplatform.googleapis.com" and "evil" not in seen.path


@pytest.mark.parametrize("path", ["/", "/v1/models/unknown:predict", "/v1/models/housing:delete",
                                  f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/999:predict"])
def test_anything_else_is_a_json_404_that_says_what_exists(stack, path):
    response = stack.post(path, json={})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert "POST /v1/models/{model}:{verb}" in error["paths"] and "housing" in error["models"]
    assert stack.emulators["us-central1"].received == []


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/models/housing:predict"), ("PUT", "/predict"), ("PATCH", "/v1/models/housing:streamRawPredict"),
    ("DELETE", f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/1001:predict")])
def test_a_method_other_than_post_is_a_json_404_and_never_reaches_vertex(stack, method, path):
    response = requests.request(method, stack.url(path), json={"instances": [1]}, timeout=10)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert "takes POST" in error["message"] and "POST /v1/models/{model}:{verb}" in error["paths"]
    response = stack.post("/v1/models/housing:predict", json={"instances": [1]})  # POST still goes through
    assert response.status_code == 200
    assert len(stack.emulators["us-central1"].received) == 1  # only the POST


def test_debug_endpoints_show_each_envoy_synced(stack):
    stack.wait_synced()
    clients = requests.get(stack.plane.admin_url + "/debug/clients", timeout=5).json()["clients"]
    assert {c["node_id"] for c in clients} == {"envoy-us-central1", "envoy-us-east4"}
    config = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-us-east4"},
                          timeout=5).json()
    clusters = [c["name"] for c in config["resources"]["Cluster"]]
    assert "model/housing@us-east4" in clusters and config["region"] == "us-east4"
    assert requests.get(stack.plane.admin_url + "/healthz", timeout=5).status_code == 200
