"""The OpenAI-compatible front door without Envoy running: the `openai:` config rules, the
routes and filters it becomes (checked by `envoy --mode validate` in test_resources), and the
emulator's OpenAI paths (real sockets)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
from google.protobuf import json_format

from control_plane.config import ConfigError, parse_config
from control_plane.lab.emulator import EmulatorThread, VertexEmulator
from control_plane.resources import LISTENER_TYPE, ROUTE_TYPE, Build, NodeGroup, build_resources

from .streaming import timed_chunks

GEMINI = "google/gemini-2.0-flash"
CONFIG = {
    "project": "p-1",
    "regions": {"us-central1": {"address": "10.0.0.1", "failover": ["us-east4"]},
                "us-east4": {"address": "10.0.0.2", "failover": ["us-central1"]}},
    "models": {"housing": {"default": True, "endpoints": {"us-central1": "11", "us-east4": "22"}},
               "gemini": {"publisher_model": GEMINI, "regions": ["us-central1", "us-east4"]},
               "llama": {"publisher_model": "meta/llama-3.3-70b-instruct-maas", "regions": ["us-east4"],
                         "policy": {"max_request_bytes": 65536}}},
}


def config(**openai):
    data = json.loads(json.dumps(CONFIG))
    if openai:
        data["openai"] = openai
    return parse_config(json.dumps(data))


def problems(**openai) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(**openai)
    return [str(p) for p in caught.value.problems]


# ---------------------------------------------------------------- config


def test_every_publisher_model_is_served_by_default():
    assert config().openai_models() == {GEMINI: "gemini", "meta/llama-3.3-70b-instruct-maas": "llama"}
    assert config(models=["gemini"]).openai_models() == {GEMINI: "gemini"}
    assert config(models=[]).openai_models() == {}


def test_openai_models_must_name_publisher_models():
    found = problems(models=["gemini", "nope", "housing"])
    assert any("openai.models[1]: unknown model 'nope'" in p for p in found), found
    assert any("openai.models[2]: model 'housing' has no `publisher_model:`" in p for p in found), found
    assert any("openai.modles: unknown key" in p for p in problems(modles=["gemini"]))


def test_two_models_with_the_same_publisher_model_cannot_both_be_served():
    data = json.loads(json.dumps(CONFIG))
    data["models"]["gemini-eu"] = {"publisher_model": GEMINI, "regions": ["us-east4"]}
    with pytest.raises(ConfigError) as caught:
        parse_config(json.dumps(data))
    assert "models.gemini-eu.publisher_model: models 'gemini' and 'gemini-eu' are both" in str(caught.value)
    data["openai"] = {"models": ["gemini-eu"]}  # the operator picks one
    assert parse_config(json.dumps(data)).openai_models() == {GEMINI: "gemini-eu"}


# ---------------------------------------------------------------- resources


def routes_of(cfg, region="us-central1") -> dict[str, dict]:
    message = build_resources(Build(cfg), NodeGroup(region, "127.0.0.1", 8080))[ROUTE_TYPE][0]
    routes = json_format.MessageToDict(message)["virtualHosts"][0]["routes"]
    return {r["name"]: r for r in routes}


def test_chat_route_per_model_on_the_body_model_and_stream_flag():
    routes = routes_of(config())
    gemini, stream = routes["openai:gemini"], routes["openai:gemini:stream"]
    assert gemini["route"]["cluster"] == "model/gemini" and gemini["route"]["timeout"] == "60s"
    assert gemini["match"]["dynamicMetadata"] == [{"filter": "vertex.openai", "path": [{"key": "model"}],
                                                   "value": {"stringMatch": {"exact": GEMINI}}}]
    assert stream["match"]["dynamicMetadata"][1]["value"] == {"boolMatch": True}
    assert stream["route"]["timeout"] == "0s" and stream["route"]["retryPolicy"]["perTryIdleTimeout"] == "20s"
    assert "vertex.openai.body" in gemini["typedPerFilterConfig"]  # the body reader is on here only
    assert "vertex.openai.body" not in routes["model:housing"].get("typedPerFilterConfig", {})
    # llama (us-east4 only) starts at us-east4 from a us-central1 Envoy
    assert routes["openai:llama"]["route"]["cluster"] == "model/llama"
    # one body limit for the chat path: the largest of its models (the buffer filter reads it first)
    assert routes["openai:gemini"]["requestBodyBufferLimit"] == routes["openai:unknown-model"][
        "requestBodyBufferLimit"] == str(16 * 1024 * 1024)


def test_unknown_model_and_other_openai_paths_are_openai_shaped_404s():
    routes = routes_of(config(models=["gemini"]))
    names = list(routes)
    assert names.index("openai:gemini") < names.index("openai:unknown-model") < names.index("not-found")
    unknown = routes["openai:unknown-model"]["directResponse"]
    assert unknown["status"] == 404
    error = unknown["bodyFormat"]["jsonFormat"]["error"]
    assert error["code"] == "model_not_found" and error["type"] == "invalid_request_error"
    assert "%DYNAMIC_METADATA(vertex.openai:model)%" in error["message"] and GEMINI in error["message"]
    assert "openai:llama" not in routes  # not listed under openai.models
    assert routes["openai:not-found"]["directResponse"]["bodyFormat"]["jsonFormat"]["error"]["code"] == "unknown_url"


def test_endpoint_models_get_the_openai_operations_when_listed():
    assert not any(name.startswith("openai-endpoint:") for name in routes_of(config()))
    routes = routes_of(config(endpoint_models=["housing"]))
    route = routes["openai-endpoint:housing"]
    assert route["match"]["safeRegex"]["regex"] == \
        "^/v1(?:beta1)?/models/housing/(?:chat/completions|completions|embeddings)$"
    assert route["route"]["cluster"] == "model/housing"
    assert "openai-endpoint:gemini" not in routes
    # pinned by a pin route of their own, which rewrites to that region's OpenAI path
    pinned = routes["pin:housing@us-east4:openai"]
    assert pinned["match"]["safeRegex"]["regex"] == route["match"]["safeRegex"]["regex"]
    assert pinned["route"]["cluster"] == "model/housing@us-east4"
    assert pinned["route"]["regexRewrite"]["substitution"].endswith("/locations/us-east4/endpoints/22/\\2")
    assert not any(name.startswith("openai-endpoint:housing@") for name in routes)


def test_openai_endpoint_models_must_name_endpoint_models():
    found = problems(endpoint_models=["gemini", "nope"])
    assert any("openai.endpoint_models[0]: model 'gemini' has no `endpoints:`" in p for p in found), found
    assert any("openai.endpoint_models[1]: unknown model 'nope'" in p for p in found), found


def test_listener_maps_envoys_own_errors_on_openai_paths_first():
    listener = json_format.MessageToDict(build_resources(Build(config()), NodeGroup("us-central1", "127.0.0.1", 8080))[
        LISTENER_TYPE][0])
    hcm = listener["filterChains"][0]["filters"][0]["typedConfig"]
    mappers = hcm["localReplyConfig"]["mappers"]
    assert [m["bodyFormatOverride"]["jsonFormat"]["error"]["type"] for m in mappers[:4]] == \
        ["invalid_request_error"] * 3 + ["server_error"]


# ---------------------------------------------------------------- emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[VertexEmulator]:
    emu = VertexEmulator("us-central1", "p-1", {"1234": "llama"}, [GEMINI])
    with EmulatorThread([emu]):
        yield emu


@pytest.fixture
def emu(emulator):
    emulator.fail("none")
    emulator.clear()
    yield emulator
    emulator.fail("none")


def url(emu, endpoint="openapi", op="chat/completions", version="v1"):
    return f"{emu.url}/{version}/projects/p-1/locations/us-central1/endpoints/{endpoint}/{op}"


CHAT = {"model": GEMINI, "messages": [{"role": "user", "content": "hi"}]}


def test_emulator_serves_chat_completions_for_publisher_models(emu):
    answer = requests.post(url(emu), json=CHAT, timeout=5)
    assert answer.status_code == 200 and answer.headers["x-emulator-region"] == "us-central1"
    body = answer.json()
    assert body["object"] == "chat.completion" and body["model"] == GEMINI
    assert "us-central1" in body["choices"][0]["message"]["content"]
    assert requests.post(url(emu, version="v1beta1"), json=CHAT, timeout=5).status_code == 200
    with requests.post(url(emu), json={**CHAT, "stream": True}, stream=True, timeout=5) as streamed:
        assert streamed.headers["content-type"].startswith("text/event-stream")
        chunks = timed_chunks(streamed)
    events = b"".join(c for _, c in chunks).split(b"\n\n")
    assert events[-2] == b"data: [DONE]" and len(chunks) >= 4  # sent apart, as SSE
    assert json.loads(events[0][len(b"data: "):])["object"] == "chat.completion.chunk"
    assert requests.post(url(emu), json={**CHAT, "model": "google/unknown"}, timeout=5).status_code == 404


def test_emulator_serves_openai_operations_of_endpoint_models(emu):
    chat = requests.post(url(emu, "1234"), json={"messages": []}, timeout=5).json()
    assert chat["model"] == "llama"
    assert requests.post(url(emu, "1234", "completions"), json={"prompt": "x"}, timeout=5).json()[
        "object"] == "text_completion"
    assert len(requests.post(url(emu, "1234", "embeddings"), json={"input": ["a", "b"]}, timeout=5).json()[
        "data"]) == 2
    assert requests.post(url(emu, "999"), json=CHAT, timeout=5).status_code == 404
    assert [r.path for r in emu.received][-1].endswith("/endpoints/999/chat/completions")


def test_emulator_fails_openai_paths_on_command(emu):
    emu.fail("429", count=1)
    failed = requests.post(url(emu), json=CHAT, timeout=5)
    assert failed.status_code == 429 and failed.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert requests.post(url(emu), json=CHAT, timeout=5).status_code == 200
    assert [(r.failure, r.status) for r in emu.received] == [("429", 429), (None, 200)]


def test_only_clusters_of_models_on_openai_paths_carry_the_longer_rewrite():
    from control_plane.resources import CLUSTER_TYPE, REWRITE_LUA
    from control_plane.resources.upstream import OPENAI_REWRITE_LUA

    def lua_of(cluster) -> str:
        options = json_format.MessageToDict(cluster)["typedExtensionProtocolOptions"]
        filters = next(iter(options.values()))["httpFilters"]
        lua = next(f for f in filters if f["name"] == "envoy.filters.http.lua")["typedConfig"]
        lua = lua.get("extensionConfig", {}).get("typedConfig", lua)  # under a matcher (names.route_region)
        return lua["defaultSourceCode"]["inlineString"]

    clusters = {c.name: c for c in build_resources(Build(config(models=["gemini"])), NodeGroup(
        "us-central1", "127.0.0.1", 8080))[CLUSTER_TYPE]}
    assert lua_of(clusters["model/gemini"]) == OPENAI_REWRITE_LUA
    with pytest.raises(StopIteration):  # a region's own cluster: its pinned routes rewrite, no Lua
        lua_of(clusters["model/gemini@us-east4"])
    assert lua_of(clusters["model/housing"]) == lua_of(clusters["model/llama"]) == REWRITE_LUA
