"""A second kind of upstream for tests and the demo: a plain JSON (OpenAI-style) server that
stands in for a custom backend (vLLM on GKE, a Cloud Run service) behind the gateway.

Unlike the Vertex emulator it knows nothing of Vertex paths: it accepts POST on the paths it
is told to serve, and only with the credential it is told to expect - a fixed header value,
or a Google ID token for its audience, verified with the issuer's public key as Cloud Run's
front end would. Anything else is answered like such a service answers: 404 for an unknown
path, 401 without the right credential. It records every request and fails on command.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from google.auth import exceptions as auth_exceptions
from google.auth import jwt


@dataclasses.dataclass
class CustomRequest:
    path: str
    query: str
    host: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    status: int  # what was answered
    id_token_claims: dict | None = None  # when an ID token was verified


@dataclasses.dataclass(frozen=True)
class ExpectHeader:
    """The request must carry header `name` with exactly `value`."""

    name: str
    value: str


@dataclasses.dataclass(frozen=True)
class ExpectIdToken:
    """`Authorization: Bearer <ID token>` signed by the key `public_key_pem`, for `audience`."""

    public_key_pem: bytes
    audience: str


class CustomBackendEmulator:
    def __init__(self, name: str, paths: Iterable[str], expect: ExpectHeader | ExpectIdToken | None = None,
                 host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None):
        self.name = name
        self.paths = set(paths)
        self.expect = expect
        self.host, self.port, self.ssl_context = host, port, ssl_context
        self._lock = threading.Lock()
        self._received: list[CustomRequest] = []
        self._fail_status: int | None = None
        self._runner: web.AppRunner | None = None

    # the same lifecycle as VertexEmulator, so EmulatorThread runs both kinds
    region = property(lambda self: self.name)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def received(self) -> list[CustomRequest]:
        with self._lock:
            return list(self._received)

    def clear(self) -> None:
        with self._lock:
            self._received = []

    def fail(self, status: int | None) -> None:
        """Answer every request with `status` (None: serve normally again)."""
        with self._lock:
            self._fail_status = status

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status, answer, claims = self._decide(request)
        with self._lock:
            self._received.append(CustomRequest(
                path=request.raw_path.split("?", 1)[0], query=request.query_string, host=request.host,
                headers={k.lower(): v for k, v in request.headers.items()}, body=body, status=status,
                id_token_claims=claims))
        if status == 200:
            answer = {"object": "prediction", "backend": self.name, "path": request.path, "created": int(time.time()),
                      "choices": [{"index": 0, "text": f"answered by {self.name}"}],
                      "request": _json_or_none(body)}
        return web.json_response(answer, status=status)

    def _decide(self, request: web.Request) -> tuple[int, dict, dict | None]:
        with self._lock:
            failing = self._fail_status
        if failing is not None:
            return failing, {"error": {"message": "told to fail", "code": failing}}, None
        if request.method != "POST" or request.path not in self.paths:
            return 404, {"error": {"message": f"no route {request.method} {request.path}", "code": 404}}, None
        claims = None
        if isinstance(self.expect, ExpectHeader):
            if request.headers.get(self.expect.name) != self.expect.value:
                return 401, {"error": {"message": f"missing or wrong {self.expect.name}", "code": 401}}, None
        elif isinstance(self.expect, ExpectIdToken):
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            try:
                if scheme != "Bearer" or not token:
                    raise ValueError("no bearer token")
                claims = jwt.decode(token, certs=self.expect.public_key_pem, audience=self.expect.audience)
            except (ValueError, auth_exceptions.GoogleAuthError) as exc:
                return 401, {"error": {"message": f"invalid ID token: {type(exc).__name__}", "code": 401}}, None
        return 200, {}, claims


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
