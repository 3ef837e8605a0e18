"""A local OAuth 2.0 token endpoint and matching service-account keys, for the demo and tests.

google-auth's real service-account code runs unchanged against it: the generated key's
`token_uri` points here, `refresh()` POSTs a signed JWT-bearer grant, and this answers
`{"access_token", "expires_in"}`. It counts grants and can be told to fail.
"""

from __future__ import annotations

import itertools
import json
import secrets
import threading
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def write_service_account_key(path: Path, token_uri: str, email: str = "gateway@demo-project.iam.gserviceaccount.com") -> Path:
    """A service-account key file like the ones the Cloud console hands out, pointing at token_uri."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": secrets.token_hex(20), "private_key": pem, "client_email": email,
        "client_id": "1" * 21, "token_uri": token_uri,
    }))
    path.chmod(0o600)
    return path


class FakeTokenServer:
    """POST /token -> a new access token per grant. `fail(status)` makes grants fail."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, expires_in: int = 3600, prefix: str = "ya29.fake"):
        self.host, self.port = host, port
        self.expires_in = expires_in
        self.prefix = prefix
        self.grants = 0  # successful grants
        self.attempts = 0
        self.issued: list[str] = []
        self._fail_status: int | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    @property
    def token_uri(self) -> str:
        return f"http://{self.host}:{self.port}/token"

    def fail(self, status: int | None) -> None:
        """Make every grant answer `status` (None: succeed again)."""
        with self._lock:
            self._fail_status = status

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        with self._lock:
            self.attempts += 1
            failing = self._fail_status
            if failing is None:
                self.grants += 1
                token = f"{self.prefix}-{next(self._ids)}-{secrets.token_urlsafe(16)}"
                self.issued.append(token)
        if failing is not None:
            return web.json_response({"error": "invalid_grant", "error_description": "told to fail"},
                                     status=failing)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get("assertion"):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        return web.json_response({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})
