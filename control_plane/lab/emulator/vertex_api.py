"""The Vertex API paths an emulator answers, shaped like Vertex's answers: endpoints (predict,
rawPredict, ...), publisher models (generateContent, ...), and the OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from typing import Any

from aiohttp import web

from .failures import HANG_MAX_SECONDS, STALL, abort

REGION_HEADER = "x-emulator-region"
STREAM_CHUNKS = 4
STREAM_INTERVAL = 0.05  # seconds between streamed chunks, so clients see them arrive apart
ENDPOINT_VERBS = frozenset({"predict", "rawPredict", "streamRawPredict", "explain", "serverStreamingPredict"})
PUBLISHER_VERBS = frozenset({"generateContent", "streamGenerateContent", "countTokens", "rawPredict",
                             "streamRawPredict"})
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_PREFIX = r"^/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
_ENDPOINT_PATH = re.compile(_PREFIX + r"/endpoints/(?P<id>[^/:]+):(?P<verb>[A-Za-z]+)$")
# Vertex's OpenAI-compatible API: publisher models at endpoints/openapi (the model named in the
# body), models deployed on an endpoint at endpoints/{id} (vLLM/TGI containers).
_OPENAI_PATH = re.compile(_PREFIX + r"/endpoints/(?P<id>[^/:]+)/(?P<op>chat/completions|completions|embeddings)$")
_PUBLISHER_PATH = re.compile(_PREFIX + r"/publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:]+)"
                                       r":(?P<verb>[A-Za-z]+)$")


def _texts(obj: Any) -> list[str]:
    """Every "text" field of a Gemini request (counting their characters stands in for tokenising)."""
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in ([v] if k == "text" and isinstance(v, str) else _texts(v))]
    if isinstance(obj, list):
        return [t for v in obj for t in _texts(v)]
    return []


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class VertexApi:
    """The request handlers of VertexEmulator (a mixin): `_route` answers one request."""

    region: str
    project: str
    endpoints: dict[str, str]
    publisher_models: set[str]
    _stopping: bool  # the emulator is stopping: a stalled stream is dropped at once

    async def _route(self, request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "POST" and (o := _OPENAI_PATH.match(request.path)) is not None:
            return await self._openai(request, body, o)
        m = _ENDPOINT_PATH.match(request.path) or _PUBLISHER_PATH.match(request.path)
        if request.method != "POST" or m is None:
            return self._error(404, f"The requested URL {request.path} was not found on this server "
                                    f"(Vertex emulator, region {self.region}).")
        prefix, verb = f"projects/{m['project']}/locations/{m['region']}", m["verb"]
        endpoint_id = m.groupdict().get("id")
        if endpoint_id is not None:
            model, verbs = self.endpoints.get(endpoint_id), ENDPOINT_VERBS
            what, about = f"Endpoint `{prefix}/endpoints/{endpoint_id}`", {"endpoint_id": endpoint_id}
        else:
            name = f"{m['publisher']}/{m['model']}"
            model, verbs = (m["model"] if name in self.publisher_models else None), PUBLISHER_VERBS
            what, about = f"Publisher Model `{prefix}/publishers/{m['publisher']}/models/{m['model']}`", {}
        if m["region"] != self.region or model is None:
            return self._error(404, f"{what} not found.")
        if verb not in verbs:
            return self._error(404, f"Method `{verb}` not found for {what}.")
        if verb == "rawPredict":  # echo, so a test can check the body arrived unchanged
            return web.Response(body=body, headers={REGION_HEADER: self.region, "Content-Type":
                                                    request.headers.get("Content-Type", "application/octet-stream")})
        if verb == "streamRawPredict":
            digest = hashlib.sha256(body).hexdigest()
            events = [_sse({"region": self.region, **about, "model": model, "index": i, "body_sha256": digest})
                      for i in range(STREAM_CHUNKS)]
            return await self._stream(request, events, "text/event-stream")
        parsed = _json_object(body)
        if parsed is None:
            return self._error(400, "Invalid JSON payload received. Unexpected token.")
        if endpoint_id is not None:
            return await self._predict(request, parsed, endpoint_id, model, verb)
        return await self._generate(request, parsed, model, verb)

    async def _predict(self, request: web.Request, parsed: dict[str, Any], endpoint_id: str, model: str,
                       verb: str) -> web.StreamResponse:
        if verb == "serverStreamingPredict":
            chunks = [{"outputs": [{"stringVal": [f"chunk {i} from {self.region}"]}], "region": self.region,
                       "endpoint_id": endpoint_id} for i in range(STREAM_CHUNKS)]
            return await self._stream_json_array(request, chunks)
        instances = parsed.get("instances")
        if not isinstance(instances, list) or not instances:
            return self._error(400, 'Invalid request: "instances" must be a non-empty list.')
        deployed = int(hashlib.sha256(f"{self.region}/{endpoint_id}".encode()).hexdigest()[:15], 16)
        answer: dict[str, Any] = {
            "predictions": [{"region": self.region, "endpoint_id": endpoint_id, "model": model, "index": i}
                            for i in range(len(instances))],
            "deployedModelId": str(deployed),
            "model": f"projects/{self.project}/locations/{self.region}/models/{model}",
            "modelDisplayName": model,
            "modelVersionId": "1",
        }
        if verb == "explain":
            answer["explanations"] = []
        return self._json(200, answer)

    async def _generate(self, request: web.Request, parsed: dict[str, Any], model: str,
                        verb: str) -> web.StreamResponse:
        texts = _texts(parsed.get("contents"))
        chars = sum(len(t) for t in texts)
        if verb == "countTokens":  # Vertex bills characters without whitespace
            billable = sum(not c.isspace() for t in texts for c in t)
            return self._json(200, {"totalTokens": (chars + 3) // 4, "totalBillableCharacters": billable})
        if not isinstance(parsed.get("contents"), list) or not parsed["contents"]:
            return self._error(400, "Unable to submit request because it has an empty contents field.")
        pieces = ["Hello ", "from the Vertex emulator ", f"in {self.region} ", f"({model})."]
        prompt, answer = (chars + 3) // 4, len(pieces) * 2
        usage = {"promptTokenCount": prompt, "candidatesTokenCount": answer, "totalTokenCount": prompt + answer}

        def reply(text: str, final: bool) -> dict[str, Any]:
            candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
            out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
            if final:
                candidate["finishReason"] = "STOP"
                out["usageMetadata"] = usage
            return out

        if verb == "generateContent":
            return self._json(200, reply("".join(pieces), True))
        events = [reply(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
        if request.query.get("alt") == "sse":
            return await self._stream(request, [_sse(e) for e in events], "text/event-stream")
        return await self._stream_json_array(request, events)

    async def _openai(self, request: web.Request, body: bytes, m: re.Match[str]) -> web.StreamResponse:
        """Chat Completions (non-streamed, or SSE with `"stream": true` ending in `data: [DONE]`),
        Completions and Embeddings, shaped like OpenAI's answers; the content names the region."""
        endpoint_id, op = m["id"], m["op"]
        what = f"Endpoint `projects/{m['project']}/locations/{m['region']}/endpoints/{endpoint_id}`"
        parsed = _json_object(body)
        if parsed is None:
            return self._error(400, "Invalid JSON payload received. Unexpected token.")
        if m["region"] != self.region:
            return self._error(404, f"{what} not found.")
        if endpoint_id == "openapi":
            model = parsed.get("model")
            if op != "chat/completions":
                return self._error(404, f"Method `{op}` not found for {what}.")
            if model not in self.publisher_models:
                return self._error(404, f"Publisher Model `{model}` not found.")
        elif endpoint_id in self.endpoints:
            model = parsed.get("model") or self.endpoints[endpoint_id]
        else:
            return self._error(404, f"{what} not found.")
        made, ident = int(time.time()), "cmpl-" + hashlib.sha256(body).hexdigest()[:24]
        usage = {"prompt_tokens": (len(body) + 3) // 4, "completion_tokens": 8, "total_tokens": (len(body) + 3) // 4 + 8}
        if op == "embeddings":
            inputs = parsed.get("input")
            inputs = inputs if isinstance(inputs, list) else [inputs]
            return self._json(200, {"object": "list", "model": model, "usage": usage, "data": [
                {"object": "embedding", "index": i, "embedding": [float(len(str(x))), float(i), 0.5]}
                for i, x in enumerate(inputs)]})
        if op == "chat/completions" and not isinstance(parsed.get("messages"), list):
            return self._error(400, 'Invalid request: "messages" must be a list.')
        pieces = ["Hello ", "from the Vertex emulator ", f"in {self.region} ", f"({model})."]
        chat = op == "chat/completions"
        kind = "chat.completion" if chat else "text_completion"

        def choice(text: str, final: bool, delta: bool) -> dict[str, Any]:
            out: dict[str, Any] = {"index": 0, "finish_reason": "stop" if final else None}
            if not chat:
                out.update(text=text, logprobs=None)
            elif delta:
                out["delta"] = {"role": "assistant", "content": text}
            else:
                out["message"] = {"role": "assistant", "content": text}
            return out

        if not parsed.get("stream"):
            return self._json(200, {"id": ident, "object": kind, "created": made, "model": model,
                                    "choices": [choice("".join(pieces), True, False)], "usage": usage})
        events = [_sse({"id": ident, "object": kind + (".chunk" if chat else ""), "created": made, "model": model,
                        "choices": [choice(p, i == len(pieces) - 1, True)]}) for i, p in enumerate(pieces)]
        return await self._stream(request, [*events, b"data: [DONE]\n\n"], "text/event-stream")

    # ---- response helpers ----
    def _json(self, status: int, obj: Any) -> web.Response:
        return web.json_response(obj, status=status, headers={REGION_HEADER: self.region})

    def _error(self, status: int, message: str) -> web.Response:
        name = STATUS_NAMES.get(status, "UNKNOWN")
        return self._json(status, {"error": {"code": status, "message": message, "status": name}})

    async def _stream_json_array(self, request: web.Request, objs: list[Any]) -> web.StreamResponse:
        chunks = [(b"[" if i == 0 else b",\r\n") + json.dumps(o).encode() for i, o in enumerate(objs)]
        chunks[-1] += b"]"
        return await self._stream(request, chunks, "application/json")

    async def _stream(self, request: web.Request, chunks: list[bytes], content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": content_type, REGION_HEADER: self.region,
                                           "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        stall = request.get(STALL)
        for i, chunk in enumerate(chunks):
            if i and stall is not None:  # "stall": silent until the mode changes, then drop it
                if not self._stopping:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stall.wait(), HANG_MAX_SECONDS)
                abort(request.transport)
                return resp
            if i:
                await asyncio.sleep(STREAM_INTERVAL)
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object; None if it is not one (Vertex answers 400 to both paths)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
