"""clients: who may call the gateway (JWT issuers, client certificates) and what each may call."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from .fields import Strict, check_ca_file, file_head, key_pair_problem

GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_JWKS_URI = "https://www.googleapis.com/oauth2/v3/certs"
# Identities end up in Envoy header matchers: no commas (the certificate list separator), no spaces.
_IDENTITY = re.compile(r"^[A-Za-z0-9._@+:/=~%-]+$")


def _check_identity(value: str) -> str:
    if value != "*" and not _IDENTITY.fullmatch(value):
        raise ValueError(f"bad identity {value!r}: a JWT claim value or certificate SAN (letters, digits and "
                         "._@+:/=~%-), or '*' for any authenticated client")
    return value


def check_jwks_file(value: Any) -> str:
    """A JWKS document that exists here and has keys: Envoy rejects the listener otherwise."""
    import json

    try:
        with open(value, "rb") as handle:
            document = json.loads(handle.read(4 * 1024 * 1024))
    except OSError as exc:
        raise ValueError(f"cannot read jwks_file {value!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValueError(f"jwks_file {value!r} is not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list) or not document["keys"]:
        raise ValueError(f'jwks_file {value!r} is not a JWKS: expected {{"keys": [...]}} with at least one key')
    for i, key in enumerate(document["keys"]):
        problem = _jwk_problem(key)
        if problem:
            raise ValueError(f"jwks_file {value!r}: key {i}: {problem} (Envoy would refuse the listener)")
    return value


# What Envoy's JWT library takes, per key type: the members each needs (base64url text).
_JWK_MEMBERS = {"RSA": ("n", "e"), "EC": ("x", "y"), "OKP": ("x",), "oct": ("k",)}
_JWK_CURVES = {"EC": ("P-256", "P-384", "P-521"), "OKP": ("Ed25519",)}


def _jwk_problem(key: Any) -> str | None:
    if not isinstance(key, dict):
        return "not a JSON object"
    kty = key.get("kty")
    if kty not in _JWK_MEMBERS:
        return f"kty {kty!r} is not one of {', '.join(_JWK_MEMBERS)}"
    if kty in _JWK_CURVES and key.get("crv") not in _JWK_CURVES[kty]:
        return f"crv {key.get('crv')!r} is not one of {', '.join(_JWK_CURVES[kty])}"
    for member in _JWK_MEMBERS[kty]:
        text = key.get(member)
        if not isinstance(text, str) or not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
            return f"`{member}` is missing or not base64url text"
    return None


def check_pem_file(value: Any) -> str:
    """The listener's certificate or key: a PEM file that exists here."""
    if b"-----BEGIN " not in file_head(value):
        raise ValueError(f"{value!r} holds no PEM block (-----BEGIN ...)")
    return value


CaFile = Annotated[str, AfterValidator(check_ca_file)]
PemFile = Annotated[str, AfterValidator(check_pem_file)]


class JwtIssuer(Strict):
    """An issuer whose tokens (Authorization: Bearer) Envoy verifies with jwt_authn."""

    issuer: str = Field(min_length=1)
    audiences: list[str] = Field(min_length=1)  # a token's `aud` must be one of these
    jwks_uri: str | None = None  # fetched by Envoy (cluster jwks/{name}); default for Google's issuer
    jwks_file: Annotated[str, AfterValidator(check_jwks_file)] | None = None  # instead of jwks_uri
    jwks_ca_file: CaFile | None = None  # TLS to jwks_uri; default the system bundle
    claim: str = Field("sub", min_length=1)  # the claim that names the caller (e.g. email)

    @property
    def jwks_source(self) -> str | None:
        if self.jwks_uri or self.jwks_file:
            return self.jwks_uri
        return GOOGLE_JWKS_URI if self.issuer in (GOOGLE_ISSUER, "accounts.google.com") else None


class ClientTls(Strict):
    """Client certificates on the listener (which then speaks HTTPS)."""

    # Files Envoy reads; like a region's ca_file they must exist where validate/serve run.
    ca_file: CaFile  # client certificates must chain to this CA
    cert_file: PemFile  # the listener's own certificate and key
    key_file: PemFile

    @model_validator(mode="after")
    def _a_usable_pair(self) -> ClientTls:
        # What Envoy loads: a certificate and its own unencrypted private key (a key file holding a
        # certificate, or another certificate's key, would make Envoy refuse the listener).
        problem = key_pair_problem(self.cert_file, self.key_file)
        if problem:
            raise ValueError(f"cert_file {self.cert_file!r} and key_file {self.key_file!r}: {problem}")
        return self


class ClientGrant(Strict):
    identities: list[Annotated[str, AfterValidator(_check_identity)]] = Field(min_length=1)
    models: list[str] | None = None  # default: every model
    regions: list[str] | None = None  # default: every region; never served (or failed over) elsewhere


class Clients(Strict):
    jwt: dict[str, JwtIssuer] = {}
    mtls: ClientTls | None = None
    allow: dict[str, ClientGrant] = Field(min_length=1)
