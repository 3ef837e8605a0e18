"""Tests for control_plane.lab.emulator: real sockets on 127.0.0.1, no mocks."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import requests
import trustme

from control_plane.lab.emulator import STREAM_INTERVAL, EmulatorThread, VertexEmulator
from control_plane.lab.harness import free_port

from .streaming import timed_chunks

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "test-project"
GEMINI = "google/gemini-2.0-flash"
CONTENTS = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}


def endpoint_url(emu: VertexEmulator, endpoint: str = "1234", verb: str = "predict",
                 region: str = "us-central1", project: str = PROJECT) -> str:
    return f"{emu.url}/v1/projects/{project}/locations/{region}/endpoints/{endpoint}:{verb}"


def gemini_url(emu: VertexEmulator, verb: str, model: str = GEMINI, region: str = "us-central1") -> str:
    publisher, name = model.split("/")
    return f"{emu.url}/v1/projects/{PROJECT}/locations/{region}/publishers/{publisher}/models/{name}:{verb}"


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def emulators() -> Iterator[EmulatorThread]:
    central = VertexEmulator("us-central1", PROJECT, {"1234": "housing"}, [GEMINI])
    east = VertexEmulator("us-east4", PROJECT, {"9876": "housing"}, [GEMINI])
    with EmulatorThread([central, east]) as thread:
        yield thread


@pytest.fixture
def emu(emulators: EmulatorThread) -> Iterator[VertexEmulator]:
    """us-central1, healthy and with an empty record (the module shares one instance for speed)."""
    emulator = emulators.emulators[0]
    emulator.fail("none")
    emulator.clear()
    yield emulator
    emulator.fail("none")  # also releases hung requests and reopens a closed listener


# ---- data API ----

def test_predict_answer_shape(emu: VertexEmulator) -> None:
    resp = requests.post(endpoint_url(emu), json={"instances": [{"x": 1}, {"x": 2}], "parameters": {}}, timeout=5)
    assert resp.status_code == 200
    assert resp.headers["x-emulator-region"] == "us-central1"
    body = resp.json()
    assert body["predictions"] == [{"region": "us-central1", "endpoint_id": "1234", "model": "housing", "index": i}
                                   for i in range(2)]
    assert body["model"] == f"projects/{PROJECT}/locations/us-central1/models/housing"
    assert body["modelDisplayName"] == "housing" and body["deployedModelId"].isdigit()
    # a project number works as well as an id; explain adds explanations
    explained = requests.post(endpoint_url(emu, verb="explain", project="123456789"), json={"instances": [1]},
                              timeout=5).json()
    assert explained["explanations"] == [] and len(explained["predictions"]) == 1


def test_not_found_and_invalid_requests(emu: VertexEmulator, emulators: EmulatorThread) -> None:
    cases = [
        (endpoint_url(emu, endpoint="5555"), 404, "NOT_FOUND"),  # unknown id
        (endpoint_url(emu, endpoint="9876", region="us-east4"), 404, "NOT_FOUND"),  # another region's id and path
        (endpoint_url(emu, verb="frobnicate"), 404, "NOT_FOUND"),
        (gemini_url(emu, "generateContent", model="google/gemini-9"), 404, "NOT_FOUND"),
        (f"{emu.url}/v1/models/housing:predict", 404, "NOT_FOUND"),
    ]
    for url, status, name in cases:
        resp = requests.post(url, json={"instances": [1]}, timeout=5)
        assert resp.status_code == status, url
        assert resp.json()["error"]["status"] == name
        assert resp.headers["x-emulator-region"] == "us-central1"
    wrong_region = requests.post(endpoint_url(emu, region="us-east4"), json={"instances": [1]}, timeout=5).json()
    assert wrong_region["error"]["message"] == \
        f"Endpoint `projects/{PROJECT}/locations/us-east4/endpoints/1234` not found."
    east = emulators.emulators[1]
    assert requests.post(endpoint_url(east, "9876", region="us-east4"), json={"instances": [1]},
                         timeout=5).json()["predictions"][0]["region"] == "us-east4"
    for body in (b"not json", b'{"parameters": {}}', b'{"instances": []}'):
        resp = requests.post(endpoint_url(emu), data=body, timeout=5)
        assert resp.status_code == 400 and resp.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_raw_predict_echoes_body(emu: VertexEmulator) -> None:
    body = os.urandom(3000)
    resp = requests.post(endpoint_url(emu, verb="rawPredict"), data=body,
                         headers={"Content-Type": "application/x-custom"}, timeout=5)
    assert resp.status_code == 200 and resp.content == body
    assert resp.headers["Content-Type"] == "application/x-custom"
    assert resp.headers["x-emulator-region"] == "us-central1"
    gemini = requests.post(gemini_url(emu, "rawPredict"), data=b'{"a": 1}', timeout=5)
    assert gemini.content == b'{"a": 1}'


@pytest.mark.parametrize("verb", ["streamRawPredict", "serverStreamingPredict"])
def test_endpoint_streaming_arrives_in_chunks(emu: VertexEmulator, verb: str) -> None:
    body = b'{"instances": [{"prompt": "hi"}]}'
    with requests.post(endpoint_url(emu, verb=verb), data=body, stream=True, timeout=5) as resp:
        assert resp.status_code == 200 and resp.headers["Transfer-Encoding"] == "chunked"
        chunks = timed_chunks(resp)
    assert len(chunks) >= 3
    # the first chunk reached the client well before the last one was sent
    assert chunks[-1][0] - chunks[0][0] >= STREAM_INTERVAL
    payload = b"".join(c for _, c in chunks)
    if verb == "streamRawPredict":
        events = [json.loads(line[len(b"data: "):]) for line in payload.split(b"\n\n") if line]
        assert {e["body_sha256"] for e in events} == {hashlib.sha256(body).hexdigest()}
        assert [e["index"] for e in events] == list(range(len(events)))
    else:
        assert len(json.loads(payload)) == len(chunks)


def test_generate_content_and_count_tokens(emu: VertexEmulator) -> None:
    body = requests.post(gemini_url(emu, "generateContent"), json=CONTENTS, timeout=5).json()
    candidate = body["candidates"][0]
    assert "us-central1" in candidate["content"]["parts"][0]["text"]
    assert candidate["finishReason"] == "STOP" and candidate["content"]["role"] == "model"
    assert body["modelVersion"] == "gemini-2.0-flash" and body["usageMetadata"]["totalTokenCount"] > 0
    tokens = requests.post(gemini_url(emu, "countTokens"), json=CONTENTS, timeout=5).json()
    assert tokens == {"totalTokens": 3, "totalBillableCharacters": 8}
    empty = requests.post(gemini_url(emu, "generateContent"), json={"contents": []}, timeout=5)
    assert empty.status_code == 400


def test_stream_generate_content_sse(emu: VertexEmulator) -> None:
    with requests.post(gemini_url(emu, "streamGenerateContent") + "?alt=sse", json=CONTENTS, stream=True,
                       timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        chunks = timed_chunks(resp)
    assert len(chunks) >= 3 and all(c.startswith(b"data: ") and c.endswith(b"\n\n") for _, c in chunks)
    events = [json.loads(c[len(b"data: "):]) for _, c in chunks]
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert "us-central1" in text and events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert emu.received[-1].query == "alt=sse"
    # without alt=sse: a JSON array, streamed
    array = requests.post(gemini_url(emu, "streamGenerateContent"), json=CONTENTS, timeout=5).json()
    assert len(array) == len(events) and array[-1]["usageMetadata"]


# ---- failure modes ----

@pytest.mark.parametrize("status", [503, 500, 502, 504, 429])
def test_error_status_modes(emu: VertexEmulator, status: int) -> None:
    emu.fail(str(status))
    for _ in range(2):  # no count: keeps failing
        resp = requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5)
        assert resp.status_code == status
        error = resp.json()["error"]
        assert error["code"] == status and error["message"]
        assert resp.headers["x-emulator-region"] == "us-central1"
    if status == 429:
        assert error["status"] == "RESOURCE_EXHAUSTED"
    assert [(r.failure, r.status) for r in emu.received] == [(str(status), status)] * 2


def test_any_status_and_count(emu: VertexEmulator) -> None:
    emu.fail("status", status=418, count=1)
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 418
    emu.fail("503", count=2)
    statuses = [requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert emu.state()["mode"] == "none"
    for bad in ({"mode": "explode"}, {"mode": "status"}, {"mode": "503", "count": 0}):
        with pytest.raises(ValueError):
            emu.fail(**bad)


def test_reset_mode(emu: VertexEmulator) -> None:
    emu.fail("reset", count=1)
    with pytest.raises(requests.ConnectionError) as err:
        requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5)
    assert "reset" in str(err.value).lower()
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 200
    assert [(r.failure, r.status) for r in emu.received] == [("reset", None), (None, 200)]


def test_hang_mode_until_mode_changes(emu: VertexEmulator) -> None:
    emu.fail("hang")
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=0.3)
    assert time.monotonic() - started < 3
    emu.fail("none")
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 200
    assert emu.received[0].failure == "hang" and emu.received[0].status is None


def test_slow_mode(emu: VertexEmulator) -> None:
    emu.fail("slow", delay=0.3, count=1)
    started = time.monotonic()
    resp = requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5)
    assert resp.status_code == 200 and time.monotonic() - started >= 0.3


def test_down_refuses_connections_then_reopens_same_port(emu: VertexEmulator) -> None:
    port = emu.port
    session = requests.Session()  # holds a keep-alive connection across the outage
    assert session.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 200
    emu.set_down_threadsafe(True)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(requests.ConnectionError):
        session.post(endpoint_url(emu), json={"instances": [1]}, timeout=5)
    assert emu.state()["down"] is True
    emu.set_down_threadsafe(False)
    assert emu.port == port
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 200
    emu.fail("down")  # the same, via fail()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    emu.fail("none")
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 200
    assert len(emu.received) == 3  # refused requests never reached the region


def test_recording(emu: VertexEmulator) -> None:
    body = b'{"instances": [{"x": 42}]}'
    headers = {"Host": "us-central1-aiplatform.googleapis.com", "Authorization": "Bearer tok-123",
               "Content-Type": "application/json", "X-Custom": "yes"}
    requests.post(endpoint_url(emu) + "?foo=bar", data=body, headers=headers, timeout=5)
    requests.post(gemini_url(emu, "countTokens"), json=CONTENTS, timeout=5)
    first, second = emu.received
    assert first.method == "POST" and first.region == "us-central1"
    assert first.path == f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/1234:predict"
    assert first.query == "foo=bar" and first.host == "us-central1-aiplatform.googleapis.com"
    assert first.headers["authorization"] == "Bearer tok-123" and first.headers["x-custom"] == "yes"
    assert first.body_sha256 == hashlib.sha256(body).hexdigest() and first.body_len == len(body)
    assert first.status == 200 and first.failure is None and first.time <= second.time
    assert second.path.endswith(":countTokens")
    assert json.loads(json.dumps(first.to_dict()))["host"] == first.host
    emu.clear()
    assert emu.received == []


# ---- control API ----

def test_control_api(emu: VertexEmulator) -> None:
    control = emu.control_url + "/_emulator"
    state = requests.post(control + "/fail", json={"mode": "429", "count": 1}, timeout=5).json()
    assert state["mode"] == "429" and state["remaining"] == 1 and state["down"] is False
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 429
    assert requests.get(control + "/state", timeout=5).json() == {
        "region": "us-central1", "mode": "none", "status": None, "remaining": None, "delay": 0.0,
        "down": False, "received": 1}
    recorded = requests.get(control + "/requests", timeout=5).json()
    assert recorded["region"] == "us-central1" and recorded["requests"][0]["status"] == 429
    assert requests.delete(control + "/requests", timeout=5).json()["received"] == 0
    assert requests.post(control + "/fail", json={"mode": "bogus"}, timeout=5).status_code == 400
    assert requests.post(control + "/fail", json={}, timeout=5).status_code == 400
    assert requests.get(control + "/nope", timeout=5).status_code == 404
    # down over HTTP: the data port refuses, the control port keeps answering, none reopens the same port
    assert requests.post(control + "/fail", json={"mode": "down"}, timeout=5).json()["down"] is True
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", emu.port), timeout=2)
    requests.post(control + "/fail", json={"mode": "none"}, timeout=5)
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5).status_code == 200


# ---- in-loop use (pytest-asyncio) ----

@pytest.mark.asyncio
async def test_in_loop_streaming_down_and_stop_releases_hang() -> None:
    emu = VertexEmulator("europe-west4", PROJECT, {"77": "m"}, [GEMINI], control_port=None)
    await emu.start()
    url = endpoint_url(emu, "77", "streamRawPredict", region="europe-west4")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            async with session.post(url, data=b"{}") as resp:
                chunks = [data async for data, _ in resp.content.iter_chunks()]
            assert len([c for c in chunks if c]) >= 3
            await emu.set_down(True)
            with pytest.raises(aiohttp.ClientConnectorError):
                await session.post(url, data=b"{}")
            await emu.set_down(False)
            emu.fail("hang")
            hung = asyncio.ensure_future(session.post(url, data=b"{}"))
            deadline = time.monotonic() + 5
            while not emu.received or emu.received[-1].failure != "hang":  # wait until the request is hung
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
    finally:
        await asyncio.wait_for(emu.stop(), 5)  # stop must not wait for the hung request
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(hung, 5)


# ---- TLS ----

def test_tls_with_trustme_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("us-central1-aiplatform.googleapis.com", "127.0.0.1").configure_cert(server_ctx)
    emu = VertexEmulator("us-central1", PROJECT, {"1234": "housing"}, ssl_context=server_ctx, control_port=None)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with EmulatorThread(emu):
        assert emu.url.startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):  # the system bundle does not trust the test CA
            requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="us-central1-aiplatform.googleapis.com") as tls:
            names = {value for _, value in tls.getpeercert()["subjectAltName"]}
        assert "us-central1-aiplatform.googleapis.com" in names
        # last, so the server has handled the connections above before it stops (no half-open TLS left behind)
        resp = requests.post(endpoint_url(emu), json={"instances": [1]}, verify=str(ca_file), timeout=5)
        assert resp.status_code == 200 and resp.json()["predictions"][0]["region"] == "us-central1"


# ---- CLI ----

def test_cli_serves_and_stops_on_sigterm() -> None:
    port, control_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "control_plane.lab.emulator", "--region", "us-east4", "--project", PROJECT,
         "--endpoint", "9876=housing", "--publisher-model", GEMINI, "--listen", f"127.0.0.1:{port}",
         "--control", f"127.0.0.1:{control_port}"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.communicate()
            try:
                return requests.get(f"http://127.0.0.1:{control_port}/_emulator/state", timeout=1).ok
            except requests.ConnectionError:
                return False
        wait_until(ready)
        emu_url = f"http://127.0.0.1:{port}/v1/projects/{PROJECT}/locations/us-east4/endpoints/9876:predict"
        resp = requests.post(emu_url, json={"instances": [1]}, headers={"Authorization": "Bearer s3cr3t-t0ken"},
                             timeout=5)
        assert resp.status_code == 200 and resp.headers["x-emulator-region"] == "us-east4"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    assert "POST /v1/projects/test-project/locations/us-east4/endpoints/9876:predict 200" in stderr
    assert "s3cr3t-t0ken" not in stderr


def test_tier_is_recorded_and_a_tier_can_answer_429(emu: VertexEmulator) -> None:
    emu.fail_tier("dedicated", 429)
    tiers = [{}, {"x-vertex-ai-llm-request-type": "dedicated"}, {"x-vertex-ai-llm-request-type": "shared"},
             {"x-vertex-ai-llm-request-type": "shared", "x-vertex-ai-llm-shared-request-type": "priority"}]
    statuses = [requests.post(endpoint_url(emu), json={"instances": [1]}, headers=h, timeout=5).status_code
                for h in tiers]
    assert statuses == [200, 429, 200, 200]
    assert [r.tier for r in emu.received] == ["", "dedicated", "shared", "priority"]
    control = emu.control_url + "/_emulator"
    assert requests.post(control + "/fail_tier", json={"tier": "shared", "status": 429}, timeout=5).json()[
        "tier_status"] == {"dedicated": 429, "shared": 429}
    emu.fail("none")  # healthy again: tier failures cleared too
    assert requests.post(endpoint_url(emu), json={"instances": [1]}, timeout=5,
                         headers={"x-vertex-ai-llm-request-type": "dedicated"}).status_code == 200


def test_tls_mode_fails_every_handshake_on_the_same_port(tmp_path) -> None:
    import ssl

    import trustme

    from control_plane.lab.emulator import EmulatorThread

    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    emu = VertexEmulator("us-central1", "p", {"1": "m"}, ssl_context=server)
    with EmulatorThread(emu):
        url = f"https://localhost:{emu.port}/v1/projects/p/locations/us-central1/endpoints/1:predict"
        verify = str(tmp_path / "ca.pem")
        assert requests.post(url, json={"instances": [1]}, verify=verify, timeout=5).status_code == 200
        port = emu.port
        emu.fail("tls")
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(url, json={"instances": [1]}, verify=verify, timeout=5)
        emu.fail("none")
        assert emu.port == port
        assert requests.post(url, json={"instances": [1]}, verify=verify, timeout=5).status_code == 200
