"""The OpenAI-compatible front door through a real Envoy, with the real `openai` SDK as the
client: publisher models at /v1/chat/completions (model named in the body), endpoint models at
/v1/models/{model}/..., failover with each region's path, host and token, OpenAI-shaped errors."""

from __future__ import annotations

import hashlib

import openai
import pytest
import requests

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import PROJECT, Stack

pytestmark = pytest.mark.e2e

GEMINI = "google/gemini-2.0-flash"
EXTRA = {"models": {"gemini": {"publisher_model": GEMINI, "regions": ["us-central1", "us-east4"],
                              "policy": {"max_request_bytes": 4096}}},
         "openai": {"endpoint_models": ["housing", "churn"]},  # their containers speak the OpenAI API
         # A failing region is never ejected here: every test starts in the local region.
         "policy": {"timeout": "10s", "per_try_timeout": "2s", "outlier_detection": {"consecutive_5xx": 1000}}}
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra=EXTRA)
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def clean(stack):
    stack.reset()
    yield


class Client:
    """An OpenAI SDK client pointed at the gateway, keeping the bytes of each body it sent."""

    def __init__(self, stack: Stack, base: str = "/v1"):
        self.sent: list[bytes] = []
        self.http = openai.DefaultHttpxClient(event_hooks={"request": [lambda r: self.sent.append(r.read())]})
        self.sdk = openai.OpenAI(base_url=stack.url(base), api_key="sk-client-key", max_retries=0, timeout=30,
                                 http_client=self.http)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.http.close()


def upstream(stack, region):
    emulator = stack.emulators[region]
    return wait_for(lambda: emulator.received[-1] if emulator.received else None, what=f"a request at {region}")


def test_chat_completion_goes_to_the_local_regions_openapi_endpoint(stack):
    with Client(stack) as client:
        raw = client.sdk.chat.completions.with_raw_response.create(model=GEMINI, messages=MESSAGES)
        completion = raw.parse()
    assert raw.headers["x-vertex-region"] == "us-central1"
    assert raw.headers["x-envoy-attempt-count"] == "1"
    assert completion.model == GEMINI and "us-central1" in completion.choices[0].message.content
    seen = upstream(stack, "us-central1")
    assert seen.path == f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/openapi/chat/completions"
    assert seen.host == "us-central1-aiplatform.googleapis.com"
    assert seen.body_sha256 == hashlib.sha256(client.sent[0]).hexdigest()  # body forwarded unchanged
    # The SDK's API key never reaches Vertex: the gateway's token replaces it.
    assert seen.headers["authorization"].startswith("Bearer ") and "sk-client-key" not in seen.headers["authorization"]
    assert stack.emulators["us-east4"].received == []


def test_streamed_chat_completion_arrives_as_server_sent_events(stack):
    with Client(stack) as client:
        stream = client.sdk.chat.completions.create(model=GEMINI, messages=MESSAGES, stream=True)
        chunks = list(stream)
    assert len(chunks) == 4 and chunks[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).endswith(f"in us-central1 ({GEMINI}).")
    assert upstream(stack, "us-central1").path.endswith("/locations/us-central1/endpoints/openapi/chat/completions")
    # and the events arrive as the region sends them, not gathered into one piece
    with Client(stack) as client, client.http.stream(
            "POST", stack.url("/v1/chat/completions"), json={"model": GEMINI, "messages": MESSAGES, "stream": True},
            headers={"authorization": "Bearer sk-client-key"}) as response:
        pieces = [piece for piece in response.iter_raw() if piece]
    assert response.headers["content-type"].startswith("text/event-stream") and len(pieces) >= 2
    assert pieces[-1].endswith(b"data: [DONE]\n\n")


def test_a_429_in_the_local_region_is_answered_by_the_next(stack):
    stack.emulators["us-central1"].fail("429")
    with Client(stack) as client:
        raw = client.sdk.chat.completions.with_raw_response.create(model=GEMINI, messages=MESSAGES)
        completion = raw.parse()
    assert raw.headers["x-vertex-region"] == "us-east4" and raw.headers["x-envoy-attempt-count"] == "2"
    assert "in us-east4" in completion.choices[0].message.content
    first, second = stack.emulators["us-central1"].received, stack.emulators["us-east4"].received
    assert [r.status for r in first] == [429] and [r.status for r in second] == [200]
    assert first[0].path == f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/openapi/chat/completions"
    assert second[0].path == f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/openapi/chat/completions"
    assert second[0].host == "us-east4-aiplatform.googleapis.com"
    assert first[0].body_sha256 == second[0].body_sha256 == hashlib.sha256(client.sent[0]).hexdigest()


def test_a_stream_fails_over_before_its_first_byte(stack):
    stack.emulators["us-central1"].fail("503")
    with Client(stack) as client:
        chunks = list(client.sdk.chat.completions.create(model=GEMINI, messages=MESSAGES, stream=True))
    assert "in us-east4" in "".join(c.choices[0].delta.content or "" for c in chunks)


def test_unknown_model_is_an_openai_not_found(stack):
    with Client(stack) as client, pytest.raises(openai.NotFoundError) as caught:
        client.sdk.chat.completions.create(model="google/gemini-unknown", messages=MESSAGES)
    error = caught.value.body
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "google/gemini-unknown" in error["message"] and GEMINI in error["message"]
    assert all(e.received == [] for e in stack.emulators.values())


def test_a_body_without_a_model_is_an_openai_bad_request(stack):
    with Client(stack) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.sdk.post("/chat/completions", cast_to=object, body={"messages": MESSAGES})
        assert "must provide a model" in caught.value.body["message"]
        response = client.http.post(stack.url("/v1/chat/completions"), content=b"{not json",
                                    headers={"content-type": "application/json"})
    assert response.status_code == 400 and "could not parse" in response.json()["error"]["message"]
    assert all(e.received == [] for e in stack.emulators.values())


def test_a_body_over_the_limit_is_an_openai_413(stack):
    with Client(stack) as client, pytest.raises(openai.APIStatusError) as caught:
        client.sdk.chat.completions.create(model=GEMINI, messages=[{"role": "user", "content": "x" * 5000}])
    assert caught.value.status_code == 413
    assert caught.value.body["code"] == "request_too_large" and caught.value.body["type"] == "invalid_request_error"
    assert all(e.received == [] for e in stack.emulators.values())


def test_every_region_failing_is_an_openai_503(stack):
    for emulator in stack.emulators.values():
        emulator.fail("reset")
    with Client(stack) as client, pytest.raises(openai.InternalServerError) as caught:
        client.sdk.chat.completions.create(model=GEMINI, messages=MESSAGES)
    assert caught.value.status_code == 503, caught.value.body
    assert caught.value.body["type"] == "server_error" and caught.value.body["message"]


def test_endpoint_model_paths_reach_that_regions_endpoint_id(stack):
    with Client(stack, "/v1/models/housing") as client:
        chat = client.sdk.chat.completions.create(model="housing", messages=MESSAGES)
        text = client.sdk.completions.create(model="housing", prompt="hi")
        vectors = client.sdk.embeddings.create(model="housing", input=["a", "bb"])
    assert "us-central1" in chat.choices[0].message.content and "us-central1" in text.choices[0].text
    assert len(vectors.data) == 2
    base = f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/1001"
    assert [r.path for r in stack.emulators["us-central1"].received] == [
        f"{base}/chat/completions", f"{base}/completions", f"{base}/embeddings"]


def test_endpoint_model_fails_over_with_the_next_regions_endpoint_id(stack):
    stack.emulators["us-central1"].fail("429")
    with Client(stack, "/v1/models/churn") as client:
        chunks = list(client.sdk.chat.completions.create(model="churn", messages=MESSAGES, stream=True))
    assert "in us-east4" in "".join(c.choices[0].delta.content or "" for c in chunks)
    assert stack.emulators["us-east4"].received[0].path == \
        f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/2003/chat/completions"


def test_v1beta1_and_pinning(stack):
    with Client(stack, "/v1beta1") as client:
        raw = client.sdk.chat.completions.with_raw_response.create(
            model=GEMINI, messages=MESSAGES, extra_headers={"x-vertex-pin-region": "us-east4"})
    assert raw.headers["x-vertex-region"] == "us-east4"
    seen = upstream(stack, "us-east4")
    assert seen.path == f"/v1beta1/projects/{PROJECT}/locations/us-east4/endpoints/openapi/chat/completions"
    assert "x-vertex-pin-region" not in seen.headers
    with Client(stack, "/v1/models/churn") as client:
        raw = client.sdk.embeddings.with_raw_response.create(
            model="churn", input="x", extra_headers={"x-vertex-pin-region": "us-east4"})
    assert raw.headers["x-vertex-region"] == "us-east4" and raw.headers["x-envoy-attempt-count"] == "1"
    assert stack.emulators["us-east4"].received[-1].path.endswith("/locations/us-east4/endpoints/2003/embeddings")


def test_model_list(stack):
    with Client(stack) as client:
        ids = [m.id for m in client.sdk.models.list()]
    assert GEMINI in ids and "housing" in ids


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/responses"), ("POST", "/v1beta1/images/generations"), ("GET", "/v1/chat/completions"),
    ("GET", "/v1/models/churn"), ("DELETE", "/v1/models/housing/embeddings")])
def test_another_openai_path_or_method_is_an_openai_unknown_url(stack, method, path):
    response = requests.request(method, stack.url(path), json={"model": GEMINI, "input": "hi"}, timeout=10)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_url" and f"{method} {path}" in error["message"]
    assert all(not e.received for e in stack.emulators.values())


def test_the_sdk_sees_an_unserved_openai_api_as_not_found(stack):
    with Client(stack) as client, pytest.raises(openai.NotFoundError) as raised:
        client.sdk.responses.create(model=GEMINI, input="hi")
    assert raised.value.code == "unknown_url"
