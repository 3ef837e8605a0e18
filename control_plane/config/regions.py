"""regions: a Vertex region or a custom backend, its active health check and its credential."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from .fields import Address, Duration, PlainText, Strict, check_ca_file, check_hostname
from .policy import PolicyOverride


def default_host(region: str) -> str:
    """A Vertex region's host when `host:` is not given (the `global` location has no regional one)."""
    return "aiplatform.googleapis.com" if region == "global" else f"{region}-aiplatform.googleapis.com"


class HealthCheck(Strict):
    """Active probes of a region's address (issue 17), so a region that stops answering is taken out
    by probes, not by client requests. `connect`: a TCP connect, plus the TLS handshake when the
    region uses TLS. `http`: also `GET /` with the region's host, healthy on any status below 500
    (no token, no quota); it also catches a region that accepts connections and never answers."""

    kind: Literal["connect", "http"] = "connect"
    interval: Duration = Field(2.0, gt=0)
    timeout: Duration = Field(1.0, gt=0)
    unhealthy_threshold: int = Field(2, ge=1, le=100)
    healthy_threshold: int = Field(2, ge=1, le=100)


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")  # an HTTP token (RFC 9110)
# Headers Envoy or the per-attempt rewrite own; a credential may not name them.
_RESERVED_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade"}
PATH_PLACEHOLDERS = ("{verb}", "{model}")


def check_upstream_path(value: Any) -> str:
    """A custom backend's path: absolute, no query or fragment, only {verb} and {model} as placeholders."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"bad path {value!r}: expected an absolute path such as /v1/chat/completions "
                         "or /v1/models/{model}:{verb}")
    rest = value
    for placeholder in PATH_PLACEHOLDERS:
        rest = rest.replace(placeholder, "")
    if any(ch in rest for ch in "{}?#%\\") or any(ch.isspace() or not ch.isprintable() for ch in rest):
        raise ValueError(f"bad path {value!r}: no query, fragment, escapes or whitespace; "
                         f"placeholders allowed: {', '.join(PATH_PLACEHOLDERS)}")
    return value


def _check_header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value) or value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"bad header name {value!r}")
    return value.lower()


class BackendCredential(Strict):
    """What a custom backend is sent on every attempt. Never the gateway's Google access token
    unless asked for (`access_token`): a backend outside Google must not receive it."""

    type: Literal["none", "header", "id_token", "access_token"] = "none"
    header: Annotated[str, AfterValidator(_check_header_name)] = "authorization"  # type header
    file: str | None = None  # type header: the file holding the header's value (re-read on SIGHUP)
    prefix: PlainText = ""  # type header: put before the file's content, e.g. "Bearer "
    audience: str | None = None  # type id_token: default https://{host} (what Cloud Run expects)


class Region(Strict):
    # vertex: a Vertex AI region. custom: any HTTP(S) backend (vLLM on GKE, Cloud Run...) that
    # models name like a region; its path comes from the model's endpoints: entry or `path`.
    kind: Literal["vertex", "custom"] = "vertex"
    address: Address
    port: int = Field(443, ge=1, le=65535)
    tls: bool = True
    # default_host(region) when not given, filled in by RegionConfig
    host: Annotated[str, BeforeValidator(check_hostname)] | None = None
    ca_file: Annotated[str, BeforeValidator(check_ca_file)] | None = None
    http2: bool = False  # HTTP/2 to the endpoint (ALPN h2 with TLS), instead of HTTP/1.1
    failover: list[str] = []
    policy: PolicyOverride | None = None
    auth: str | None = None  # a profile under auth.profiles (a different producer project)
    health_check: HealthCheck | None = None  # active probes of the address; none by default
    path: Annotated[str, AfterValidator(check_upstream_path)] | None = None  # custom: default upstream path
    credential: BackendCredential | None = None  # custom only; default none

    @property
    def custom(self) -> bool:
        return self.kind == "custom"
