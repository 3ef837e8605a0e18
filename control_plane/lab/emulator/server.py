"""A Vertex emulator's servers: the data listener (opened, closed and switched to plain text as
its failure mode says), the recording of each request, the injected failure applied to it, and
the control API; EmulatorThread runs emulators on a loop of their own."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from aiohttp import web

from .failures import FAILURE_MESSAGES, HANG_MAX_SECONDS, STALL, Failure, FailureModes, abort, drop_connections
from .vertex_api import VertexApi

log = logging.getLogger("control_plane.lab.emulator")  # one logger for the emulator's modules
T = TypeVar("T")

MAX_BODY = 32 * 1024 * 1024
# Envoy's active HTTP health checks: answered (or hung) like any request, but not recorded and
# not counted against `count`, so tests see only client traffic.
PROBE_USER_AGENT = "Envoy/HC"


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


def request_tier(headers: dict[str, str]) -> str:
    """The capacity tier a request asks Vertex for, from X-Vertex-AI-LLM-(Shared-)Request-Type."""
    kind = headers.get("x-vertex-ai-llm-request-type", "")
    if kind == "shared" and headers.get("x-vertex-ai-llm-shared-request-type", "") == "priority":
        return "priority"
    return kind


class VertexEmulator(VertexApi):
    def __init__(self, region: str, project: str, endpoints: dict[str, str] | None = None,
                 publisher_models: list[str] | None = None, host: str = "127.0.0.1", port: int = 0,
                 control_port: int | None = 0, ssl_context: ssl.SSLContext | None = None,
                 control_host: str | None = None) -> None:
        self.region, self.project, self.host = region, project, host
        self.control_host = control_host or host
        self.endpoints = dict(endpoints or {})
        self.publisher_models = set(publisher_models or [])
        self.port, self.control_port, self.ssl_context = port, control_port, ssl_context
        self._lock = threading.Lock()  # guards _received (appended on the loop, read from other threads)
        self._received: list[ReceivedRequest] = []
        self.failures = FailureModes()
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
                drop_connections(runner)  # not a graceful close: a TLS close_notify could outlive the loop
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
        return self.failures.down

    def state(self) -> dict[str, Any]:
        return {"region": self.region, **self.failures.state(), "received": len(self.received)}

    def fail(self, mode: str, count: int | None = None, status: int | None = None, delay: float = 0.0) -> None:
        """Set the failure mode. From another thread, returns once the data listener matches "down"."""
        self.failures.set(mode, count, status, delay)
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
        self.failures.set_down(down)
        self._wake()
        await self._sync_listener()

    def set_down_threadsafe(self, down: bool, timeout: float = 30.0) -> None:
        if self._loop is None:
            raise RuntimeError("emulator not started")
        asyncio.run_coroutine_threadsafe(self.set_down(down), self._loop).result(timeout)

    def fail_tier(self, tier: str, status: int | None) -> None:
        """Answer `status` (e.g. 429) to every request asking for capacity tier `tier` (dedicated,
        shared, priority, or "" for none), while no other failure mode applies; None: serve it
        again. fail("none") clears every tier failure."""
        self.failures.fail_tier(tier, status)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    @property
    def _want_plain(self) -> bool:
        """Mode "tls" on a TLS emulator: the port answers without TLS, so every handshake fails."""
        return self.failures.mode == "tls" and self.ssl_context is not None

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
                drop_connections(self._data_runner)  # a down region keeps no keep-alive connections either
                if wrong_tls and not self.down and not self._stopping:  # "tls" on or off: same port
                    await self._open_listener()
            elif not self.down and self._site is None and self._data_runner is not None and not self._stopping:
                await self._open_listener()

    # ---- data API ----
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.down:  # raced in on a connection accepted just before the listener closed
            abort(request.transport)
            return web.Response()
        if request.headers.get("User-Agent") == PROBE_USER_AGENT:
            self.probes += 1
            resp = await self._answer(request, body, self.failures.peek())
            return resp if resp is not None else web.Response()
        headers = {name.lower(): ", ".join(request.headers.getall(name)) for name in request.headers}
        rec = ReceivedRequest(
            method=request.method, path=request.raw_path.split("?", 1)[0], query=request.query_string,
            host=request.headers.get("Host", ""), headers=headers, body_sha256=hashlib.sha256(body).hexdigest(),
            body_len=len(body), region=self.region, time=time.time(), tier=request_tier(headers))
        # A tier's status applies when no other failure does (e.g. Provisioned Throughput exhausted).
        failure = self.failures.take() or self.failures.tier_failure(rec.tier)
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
                      failure: Failure | None) -> web.StreamResponse | None:
        if failure is not None:
            mode, status, delay = failure
            changed = self._changed
            if delay:
                await asyncio.sleep(delay)
            if mode == "stall":  # answer, but a stream goes silent after its first chunk
                request[STALL] = changed or asyncio.Event()
                return await self._route(request, body)
            if mode == "hang":
                if changed is not None and not self._stopping:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(changed.wait(), HANG_MAX_SECONDS)
                mode = "reset"  # released: never answer, just drop the connection
            if mode == "reset":
                abort(request.transport)
                return None
            if status is not None:
                return self._error(status, FAILURE_MESSAGES.get(status, f"Injected failure: HTTP {status}."))
        return await self._route(request, body)


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
                self.failures.set(str(req["mode"]), None if count is None else int(count),
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
            return web.json_response({"region": self.region, "tier_status": self.failures.tiers()})
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

