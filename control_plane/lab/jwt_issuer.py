"""A local OIDC-style issuer for the tests and the benchmarks: an RSA key, its JWKS, and RS256-signed
tokens made with `cryptography` (in the test extra; what Google's metadata server or any OIDC
provider would hand a client)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Issuer:
    def __init__(self, issuer: str, kid: str = "test-key"):
        self.issuer = issuer
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> dict:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
                          "n": _uint(numbers.n), "e": _uint(numbers.e)}]}

    def write_jwks(self, path: Path) -> str:
        path.write_text(json.dumps(self.jwks()))
        return str(path)

    def token(self, audience: str, lifetime: float = 600, issuer: str | None = None, signed: bool = True,
              **claims) -> str:
        now = int(time.time())
        payload = {"iss": issuer or self.issuer, "aud": audience, "iat": now - 5, "exp": now + int(lifetime),
                   **claims}
        header = {"alg": "RS256" if signed else "none", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        if not signed:
            return signing_input + "."
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"
