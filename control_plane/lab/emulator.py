"""A local stand-in for one region of the Vertex AI prediction API.

Used by the demo and by end-to-end tests that put a real Envoy in front of it:
it answers like Vertex, records every request it reads, and fails on command.

Recording: every request that reaches a handler is appended to ``received``,
including failed ones. ``ReceivedRequest.failure`` names the injected mode that
was applied ("503", "reset", "hang", "slow", ...; None when served normally) and
``status`` is the HTTP status sent (None when no response was sent: reset, hang).
Requests refused because the region is "down" never reach a handler and are
not recorded. The control API shows Authorization values as received: this is
a test double, and e2e tests check the token Envoy injected.

``delay`` applies to every failing mode: wait, then fail ("slow" = wait, then
answer normally; "stall" = answer, but a stream goes silent after its first chunk
until the mode changes, then the connection is dropped; "tls" = on a TLS emulator,
the connections are dropped and the port answers without TLS, so every TLS
handshake fails). Envoy's HTTP health
probes (User-Agent ``Envoy/HC``) get the current failure too (a hung region hangs
them) but are only counted in ``probes``, never recorded nor counted in ``count``.

Capacity tiers: ``ReceivedRequest.tier`` records the tier each request asked for
(``X-Vertex-AI-LLM-Request-Type``: dedicated/shared, "priority" for shared +
``X-Vertex-AI-LLM-Shared-Request-Type: priority``, "" for none); ``fail_tier(tier,
429)`` answers that status to requests of one tier (Provisioned Throughput exhausted). A numeric mode ("503", "418") answers that status; mode
"status" takes ``status=``. ``count`` does not apply to "down".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import signal
import socket
import ssl
import struct
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from aiohttp import web

log = logging.getLogger("control_plane.lab.emulator")  # not __name__: that is "__main__" under -m
T = TypeVar("T")

REGION_HEADER = "x-emulator-region"
STREAM_CHUNKS = 4
STREAM_INTERVAL = 0.05  # seconds between streamed chunks, so clients see them arrive apart
HANG_MAX_SECONDS = 600.0
MAX_BODY = 32 * 1024 * 1024
MODES = ("none", "reset", "hang", "slow", "down", "status", "stall", "tls")
# Envoy's active HTTP health checks: answered (or hung) like any request, but not recorded and
# not counted against `count`, so tests see only client traffic.
PROBE_USER_AGENT = "Envoy/HC"
_STALL = web.RequestKey("stall", asyncio.Event)  # set on a request answered in "stall" mode
ENDPOINT_VERBS = frozenset({"predict", "rawPredict", "streamRawPredict", "explain", "serverStreamingPredict"})
PUBLISHER_VERBS = frozenset({"generateContent", "streamGenerateContent", "countTokens", "rawPredict",
                             "streamRawPredict"})
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
FAILURE_MESSAGES = {
    429: "Resource exhausted. Please try again later. Please refer to "
         "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
    500: "Internal error encountered.",
    502: "Bad Gateway.",
    503: "The service is currently unavailable.",
    504: "Deadline exceeded.",
}
_PREFIX = r"^/v1(?:beta1)?/projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)"
_ENDPOINT_PATH = re.compile(_PREFIX + r"/endpoints/(?P<id>[^/:]+):(?P<verb>[A-Za-z]+)$")
# Vertex's OpenAI-compatible API: publisher models at endpoints/openapi (the model named in the
# body), models deployed on an endpoint at endpoints/{id} (vLLM/TGI containers).
_OPENAI_PATH = re.compile(_PREFIX + r"/endpoints/(?P<id>[^/:]+)/(?P<op>chat/completions|completions|embeddings)$")
_PUBLISHER_PATH = re.compile(_PREFIX + r"/publishers/(?P<publisher>[^/]+)/models/(?P<model>[^/:]+)"
                                       r":(?P<verb>[A-Za-z]+)$")


@dataclasses.dataclass
class ReceivedRequest:
    method: str
    path: str  # raw (as sent, not percent-decoded), without the query
    query: str
    host: str  # the Host header as received
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", "
    body_sha256: str
    body_len: int
    region: str
    time: float
    failure: str | None = None  # injected mode applied to this request, None if served normally
    status: int | None = None  # status sent; None if none was (reset, hang, or still in flight)
    tier: str = ""  # capacity tier asked for: dedicated, shared, priority, or "" (no tier header)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _abort(transport: asyncio.BaseTransport | None) -> None:
    """Drop a connection with a TCP RST (SO_LINGER 0), so clients see ECONNRESET, not a clean EOF."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _drop_connections(runner: web.AppRunner) -> None:
    for handler in runner.server.connections if runner.server else []:
        _abort(handler.transport)


def _texts(obj: Any) -> list[str]:
    """Every "text" field of a Gemini request (counting their characters stands in for tokenising)."""
    if isinstance(obj, dict):
        return [t for k, v in obj.items() for t in ([v] if k == "text" and isinstance(v, str) else _texts(v))]
    if isinstance(obj, list):
        return [t for v in obj for t in _texts(v)]
    return []


def request_tier(headers: dict[str, str]) -> str:
    """The capacity tier a request asks Vertex for, from X-Vertex-AI-LLM-(Shared-)Request-Type."""
    kind = headers.get("x-vertex-ai-llm-request-type", "")
    if kind == "shared" and headers.get("x-vertex-ai-llm-shared-request-type", "") == "priority":
        return "priority"
    return kind


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class VertexEmulator:
    def __init__(self, region: str, project: str, endpoints: dict[str, str] | None = None,
                 publisher_models: list[str] | None = None, host: str = "127.0.0.1", port: int = 0,
                 control_port: int | None = 0, ssl_context: ssl.SSLContext | None = None,
                 control_host: str | None = None) -> None:
        self.region, self.project, self.host = region, project, host
        self.control_host = control_host or host
        self.endpoints = dict(endpoints or {})
        self.publisher_models = set(publisher_models or [])
        self.port, self.control_port, self.ssl_context = port, control_port, ssl_context
        self._lock = threading.Lock()  # guards _received and the failure state (touched from other threads)
        self._received: list[ReceivedRequest] = []
        self._mode, self._status, self._remaining, self._delay = "none", None, None, 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data_runner: web.AppRunner | None = None
        self._control_runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._site_plain = False  # the listener serves without TLS although ssl_context is set ("tls")
        self._listener_lock: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None  # replaced on each mode change; hung requests wait on it
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.probes = 0  # health-check requests answered (never in `received`)
        self._tier_status: dict[str, int] = {}  # tier -> status answered to requests asking for it

    # ---- lifecycle ----
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._listener_lock, self._changed, self._stopping = asyncio.Lock(), asyncio.Event(), False
        data = web.Application(client_max_size=MAX_BODY)
        data.router.add_route("*", "/{tail:.*}", self._handle)
        self._data_runner = web.AppRunner(data, access_log=None, shutdown_timeout=1.0)
        await self._data_runner.setup()
        await self._open_listener()  # always bind once, so port 0 becomes a real port
        await self._sync_listener()  # then honour a fail("down") issued before start
        if self.control_port is not None:
            control = web.Application()
            control.router.add_route("*", "/{tail:.*}", self._control)
            self._control_runner = web.AppRunner(control, access_log=None)
            await self._control_runner.setup()
            site = web.TCPSite(self._control_runner, self.control_host, self.control_port)
            await site.start()
            self.control_port = site.port

    async def stop(self) -> None:
        self._stopping = True
        self._wake()  # release hung requests so shutdown does not wait for them
        for runner in (self._control_runner, self._data_runner):
            if runner is not None:
                _drop_connections(runner)  # not a graceful close: a TLS close_notify could outlive the loop
                await runner.cleanup()
        self._control_runner = self._data_runner = self._site = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self._netloc(self.host, self.port)}"

    @property
    def control_url(self) -> str:
        if self.control_port is None:
            raise RuntimeError("control API disabled (control_port=None)")
        return f"http://{self._netloc(self.control_host, self.control_port)}"

    @staticmethod
    def _netloc(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # ---- recording and failure state (safe from any thread) ----
    @property
    def received(self) -> list[ReceivedRequest]:
        """A snapshot copy, in arrival order."""
        with self._lock:
            return list(self._received)

    def clear(self) -> None:
        with self._lock:
            self._received = []

    @property
    def down(self) -> bool:
        return self._mode == "down"

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"region": self.region, "mode": self._mode, "status": self._status, "remaining": self._remaining,
                    "delay": self._delay, "down": self._mode == "down", "received": len(self._received)}

    def fail(self, mode: str, count: int | None = None, status: int | None = None, delay: float = 0.0) -> None:
        """Set the failure mode. From another thread, returns once the data listener matches "down"."""
        self._set_mode(mode, count, status, delay)
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return  # not started: start() applies the state
        loop.call_soon_threadsafe(self._wake)
        if (self._site is None) == self.down and self._site_plain == self._want_plain:
            return  # listener already matches
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # cannot block the loop we run on: schedule (await set_down() to be sure it is done)
            task = loop.create_task(self._sync_listener())
            self._tasks.add(task)  # keep a reference until done
            task.add_done_callback(self._tasks.discard)
        else:
            asyncio.run_coroutine_threadsafe(self._sync_listener(), loop).result(timeout=30)

    async def set_down(self, down: bool) -> None:
        with self._lock:
            if down or self._mode == "down":
                self._mode, self._status, self._remaining = ("down" if down else "none"), None, None
        self._wake()
        await self._sync_listener()

    def set_down_threadsafe(self, down: bool, timeout: float = 30.0) -> None:
        if self._loop is None:
            raise RuntimeError("emulator not started")
        asyncio.run_coroutine_threadsafe(self.set_down(down), self._loop).result(timeout)

    def _set_mode(self, mode: str, count: int | None, status: int | None, delay: float) -> None:
        if mode.isdigit():
            status = int(mode)
        elif mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(MODES)} or a status code like '503'")
        elif mode != "status":
            status = None
        if (mode == "status" or mode.isdigit()) and (status is None or not 200 <= status <= 599):
            raise ValueError("a status mode needs a status code between 200 and 599")
        if count is not None and count < 1:
            raise ValueError("count must be >= 1 (or omitted: fail until told otherwise)")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            if mode == "none":
                self._tier_status = {}
            healthy = mode in ("none", "down")  # count and delay only make sense for failing requests
            self._mode, self._status = mode, status
            self._remaining, self._delay = (None, 0.0) if healthy else (count, float(delay))

    def _take_failure(self) -> tuple[str, int | None, float] | None:
        """The failure to apply to one request, counting it against `count`."""
        with self._lock:
            if self._mode in ("none", "down"):
                return None
            taken = (self._mode, self._status, self._delay)
            if self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:  # no _wake(): the request that used up the count may itself hang
                    self._mode, self._status, self._remaining, self._delay = "none", None, None, 0.0
            return taken

    def fail_tier(self, tier: str, status: int | None) -> None:
        """Answer `status` (e.g. 429) to every request asking for capacity tier `tier` (dedicated,
        shared, priority, or "" for none), while no other failure mode applies; None: serve it
        again. fail("none") clears every tier failure."""
        if status is not None and not 200 <= status <= 599:
            raise ValueError("a tier failure needs a status code between 200 and 599")
        with self._lock:
            if status is None:
                self._tier_status.pop(tier, None)
            else:
                self._tier_status[tier] = status

    def _peek_failure(self) -> tuple[str, int | None, float] | None:
        with self._lock:
            return None if self._mode in ("none", "down") else (self._mode, self._status, self._delay)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    @property
    def _want_plain(self) -> bool:
        """Mode "tls" on a TLS emulator: the port answers without TLS, so every handshake fails."""
        return self._mode == "tls" and self.ssl_context is not None

    async def _open_listener(self) -> None:
        assert self._data_runner is not None
        plain = self._want_plain
        site = web.TCPSite(self._data_runner, self.host, self.port, ssl_context=None if plain else self.ssl_context)
        await site.start()
        self._site, self.port, self._site_plain = site, site.port, plain

    async def _sync_listener(self) -> None:
        """Open or close the data listener to match the "down" state (same port when reopening)."""
        if self._listener_lock is None:
            return  # not started: start() applies the state
        async with self._listener_lock:
            wrong_tls = self._site is not None and self._site_plain != self._want_plain
            if (self.down or wrong_tls) and self._site is not None and self._data_runner is not None:
                site, self._site = self._site, None
                await site.stop()
                _drop_connections(self._data_runner)  # a down region keeps no keep-alive connections either
                if wrong_tls and not self.down and not self._stopping:  # "tls" on or off: same port
                    await self._open_listener()
            elif not self.down and self._site is None and self._data_runner is not None and not self._stopping:
                await self._open_listener()

    # ---- data API ----
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.down:  # raced in on a connection accepted just before the listener closed
            _abort(request.transport)
            return web.Response()
        if request.headers.get("User-Agent") == PROBE_USER_AGENT:
            self.probes += 1
            resp = await self._answer(request, body, self._peek_failure())
            return resp if resp is not None else web.Response()
        headers = {name.lower(): ", ".join(request.headers.getall(name)) for name in request.headers}
        rec = ReceivedRequest(
            method=request.method, path=request.raw_path.split("?", 1)[0], query=request.query_string,
            host=request.headers.get("Host", ""), headers=headers, body_sha256=hashlib.sha256(body).hexdigest(),
            body_len=len(body), region=self.region, time=time.time(), tier=request_tier(headers))
        failure = self._take_failure()
        if failure is None and rec.tier in self._tier_status:  # e.g. Provisioned Throughput exhausted
            failure = ("tier", self._tier_status[rec.tier], 0.0)
        rec.failure = failure[0] if failure else None
        with self._lock:
            self._received.append(rec)
        resp = await self._answer(request, body, failure)
        rec.status = resp.status if resp is not None else None
        # Path only: queries and headers (Authorization) stay out of logs.
        log.info("%s %s %s %s", self.region, request.method, rec.path,
                 rec.status if resp is not None else f"no response ({rec.failure})")
        return resp if resp is not None else web.Response()  # the transport is gone: aiohttp drops it

    async def _answer(self, request: web.Request, body: bytes,
                      failure: tuple[str, int | None, float] | None) -> web.StreamResponse | None:
        if failure is not None:
            mode, status, delay = failure
            changed = self._changed
            if delay:
                await asyncio.sleep(delay)
            if mode == "stall":  # answer, but a stream goes silent after its first chunk
                request[_STALL] = changed or asyncio.Event()
                return await self._route(request, body)
            if mode == "hang":
                if changed is not None and not self._stopping:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(changed.wait(), HANG_MAX_SECONDS)
                mode = "reset"  # released: never answer, just drop the connection
            if mode == "reset":
                _abort(request.transport)
                return None
            if status is not None:
                return self._error(status, FAILURE_MESSAGES.get(status, f"Injected failure: HTTP {status}."))
        return await self._route(request, body)

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
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
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
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
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
        stall = request.get(_STALL)
        for i, chunk in enumerate(chunks):
            if i and stall is not None:  # "stall": silent until the mode changes, then drop it
                if not self._stopping:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stall.wait(), HANG_MAX_SECONDS)
                _abort(request.transport)
                return resp
            if i:
                await asyncio.sleep(STREAM_INTERVAL)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    # ---- control API ----
    async def _control(self, request: web.Request) -> web.Response:
        route = (request.method, request.path)
        if route == ("GET", "/_emulator/requests"):
            return web.json_response({"region": self.region, "requests": [r.to_dict() for r in self.received]})
        if route == ("DELETE", "/_emulator/requests"):
            self.clear()
            return web.json_response(self.state())
        if route == ("GET", "/_emulator/state"):
            return web.json_response(self.state())
        if route == ("POST", "/_emulator/fail"):
            try:
                req = await request.json()
                status = req.get("status")
                count = req.get("count")
                self._set_mode(str(req["mode"]), None if count is None else int(count),
                               None if status is None else int(status), float(req.get("delay") or 0.0))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return web.json_response({"error": f"bad request: {exc!r}"}, status=400)
            self._wake()
            await self._sync_listener()
            return web.json_response(self.state())
        if route == ("POST", "/_emulator/fail_tier"):
            try:
                req = await request.json()
                status = req.get("status")
                self.fail_tier(str(req["tier"]), None if status is None else int(status))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return web.json_response({"error": f"bad request: {exc!r}"}, status=400)
            with self._lock:
                return web.json_response({"region": self.region, "tier_status": dict(self._tier_status)})
        return web.json_response({"error": "not found", "paths": ["GET|DELETE /_emulator/requests",
                                  "POST /_emulator/fail", "POST /_emulator/fail_tier", "GET /_emulator/state"]},
                                 status=404)


class EmulatorThread:
    """Runs emulators on a private event loop in a daemon thread (for sync tests and the demo)."""

    def __init__(self, emulators: VertexEmulator | Iterable[VertexEmulator]) -> None:
        self.emulators = [emulators] if isinstance(emulators, VertexEmulator) else list(emulators)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="vertex-emulator", daemon=True)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> EmulatorThread:
        self._thread.start()
        try:
            for emulator in self.emulators:
                self.call(emulator.start())
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for emulator in self.emulators:
            try:
                self.call(emulator.stop())
            except Exception:  # keep stopping the others
                log.exception("stopping emulator %s failed", emulator.region)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _endpoint(value: str) -> tuple[str, str]:
    endpoint_id, sep, model = value.partition("=")
    if not sep or not endpoint_id or not model:
        raise argparse.ArgumentTypeError(f"expected ID=MODEL, got {value!r}")
    return endpoint_id, model


async def _serve(args: argparse.Namespace, ssl_context: ssl.SSLContext | None) -> None:
    (host, port), control = args.listen, args.control
    emulator = VertexEmulator(args.region, args.project, dict(args.endpoint),
                              [m for group in args.publisher_model for m in group], host, port,
                              None if control is None else control[1], ssl_context,
                              None if control is None else control[0])
    await emulator.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    log.info("emulator %s serving %s (control %s)", args.region, emulator.url,
             emulator.control_url if control is not None else "disabled")
    await stop.wait()
    await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m control_plane.lab.emulator",
                                     description="Local Vertex AI emulator for one region.")
    parser.add_argument("--region", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--endpoint", type=_endpoint, action="append", default=[], metavar="ID=MODEL")
    parser.add_argument("--publisher-model", nargs="+", action="append", default=[], metavar="PUBLISHER/MODEL")
    parser.add_argument("--listen", type=_host_port, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--control", type=_host_port, default=None, metavar="HOST:PORT")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            parser.error(f"cannot load --tls-cert/--tls-key: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args, ssl_context))


if __name__ == "__main__":
    main()
