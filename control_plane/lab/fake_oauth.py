"""A local OAuth 2.0 token endpoint and matching service-account keys, for the demo and tests.

google-auth's real service-account code runs unchanged against it: the generated key's
`token_uri` points here, `refresh()` POSTs a signed JWT-bearer grant, and this answers
`{"access_token", "expires_in"}`. A grant whose assertion carries `target_audience` (what
google-auth's IDTokenCredentials send) is answered `{"id_token"}` instead: a JWT for that
audience signed with this server's own key (`public_key_pem` verifies it, as a Cloud Run
front end would verify Google's). It counts grants and can be told to fail.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, jwt


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
        self.id_tokens: list[str] = []  # issued ID tokens, in order
        self.audiences: list[str] = []  # the target_audience of each ID-token grant
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._signer = crypt.RSASigner.from_string(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), "fake-kid")
        self.public_key_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
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
        claims = _claims(str(form.get("assertion", "")))
        audience = claims.get("target_audience")
        with self._lock:
            self.attempts += 1
            failing = self._fail_status
            if failing is None:
                self.grants += 1
                serial = next(self._ids)
                if audience:
                    now = int(time.time())
                    token = jwt.encode(self._signer, {
                        "iss": "https://accounts.google.com", "aud": audience, "azp": claims.get("iss", ""),
                        "email": claims.get("iss", ""), "sub": "1" * 21, "iat": now, "exp": now + self.expires_in,
                        "serial": serial}).decode()
                    self.id_tokens.append(token)
                    self.audiences.append(audience)
                else:
                    token = f"{self.prefix}-{serial}-{secrets.token_urlsafe(16)}"
                    self.issued.append(token)
        if failing is not None:
            return web.json_response({"error": "invalid_grant", "error_description": "told to fail"},
                                     status=failing)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not form.get("assertion"):
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if audience:
            return web.json_response({"id_token": token})
        return web.json_response({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})


def _claims(assertion: str) -> dict:
    """The payload of the grant's JWT, unverified (the fake does not know the client's key)."""
    try:
        payload = assertion.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
