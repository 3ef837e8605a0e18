"""regions.yaml: typed models, loading, and every rule from SPEC "Rules".

Structural checks (types, unknown keys, durations, addresses) come from pydantic;
cross-references (a model naming an unknown region, a failover list naming
itself...) are checked on the raw data so that one run reports every problem,
not just the first that stopped the parse.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    field_validator,
)

from . import yamlsafe
from .yamlsafe import Limits, YamlRefused

T = TypeVar("T")

VERBS = ("predict", "rawPredict", "streamRawPredict", "explain", "serverStreamingPredict")
PUBLISHER_VERBS = ("generateContent", "streamGenerateContent", "countTokens", "rawPredict", "streamRawPredict")
# Answered as a stream: no whole-response timeout, failover only before the first byte.
STREAMING_VERBS = frozenset({"streamRawPredict", "serverStreamingPredict", "streamGenerateContent"})

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# A project id, optionally domain-scoped (example.com:my-project), or a project number.
_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]{0,62}:)?[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?$|^[0-9]{1,20}$")
# Envoy's largest Duration: int64 milliseconds (about 292 years); protobuf's own limit is higher.
MAX_DURATION_SECONDS = 9_223_372_036


def parse_duration(value: Any) -> float:
    """'60s', '250ms', '5m', '1h' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: use a number with a unit, e.g. 20s or 500ms")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value).strip())
        if not match:
            raise ValueError(f"bad duration {value!r}: use a number with a unit, e.g. 20s or 500ms")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {value!r}: must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"bad duration {value!r}: must not be negative")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"bad duration {value!r}: beyond Envoy's limit of {MAX_DURATION_SECONDS:,} s")
    return seconds


def _is_hostname(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= 253 and all(_HOSTNAME_LABEL.match(label) for label in labels) \
        and not labels[-1].isdigit()


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def check_address(value: Any) -> str:
    """An IP literal or a DNS hostname (a PSC forwarding rule or a private DNS name)."""
    if not isinstance(value, str):  # `address:` (null) or `true` must not become the hostname "None"/"True"
        raise ValueError(f"bad address {_shown(value)}: expected an IP address or a hostname")
    text = value.strip()
    if not (is_ip(text) or _is_hostname(text)):
        raise ValueError(f"bad address {value!r}: expected an IP address or a hostname")
    return text


def check_ip(value: Any) -> str:
    """An address Envoy binds: an IP literal (Envoy does not resolve listener addresses)."""
    if not isinstance(value, str) or not is_ip(value.strip()):
        raise ValueError(f"bad listener address {_shown(value)}: expected an IP address such as 0.0.0.0 or 10.0.0.5")
    return value.strip()


def check_hostname(value: Any) -> str:
    """A DNS name: sent as the Host header and the TLS SNI, so no IP, space or control character."""
    if not isinstance(value, str) or not _is_hostname(value):
        raise ValueError(f"bad host {_shown(value)}: expected a DNS name such as us-central1-aiplatform.googleapis.com")
    return value


def check_project(value: Any) -> str:
    """A GCP project id or number: it goes into every upstream path, so nothing else may."""
    if type(value) is int and value > 0:  # an unquoted project number
        return str(value)
    if isinstance(value, str) and _PROJECT.match(value):
        return value
    if value == "":
        raise ValueError("must not be empty: give the Vertex project id or number")
    raise ValueError(f"bad project {_shown(value)}: expected a project id (lowercase letters, digits and "
                     "hyphens, starting with a letter, at most 30 characters) or a project number")


def _file_head(path: str, label: str = "") -> bytes:
    """The first 4 MiB of a file Envoy will read, or a ValueError saying why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4 * 1024 * 1024)
    except OSError as exc:
        raise ValueError(f"cannot read {label}{path!r}: {exc.strerror or exc}") from exc


def check_ca_file(value: Any) -> str:
    """A file of PEM CA certificates that exists here: Envoy would reject the cluster otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"bad ca_file {_shown(value)}: expected the path of a PEM file of CA certificates")
    if b"-----BEGIN CERTIFICATE-----" not in _file_head(value, "ca_file "):
        raise ValueError(f"ca_file {value!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]
Address = Annotated[str, BeforeValidator(check_address)]


class _Strict(BaseModel):
    # strict: `port: true` is not 1 and `num_retries: "2"` is not 2; say what was meant instead.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class OutlierDetection(_Strict):
    consecutive_5xx: int = Field(3, ge=1, le=2**32 - 1)
    interval: Duration = Field(5.0, gt=0)  # Envoy rejects a zero interval / ejection time
    base_ejection_time: Duration = Field(30.0, gt=0)
    max_ejection_percent: int = Field(100, ge=0, le=100)
    # A region answering 429 is out of capacity: skipping it beats paying a wasted attempt.
    eject_on_429: bool = True


_RETRY_ON = {"5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes",
             "refused-stream", "reset-before-request", "envoy-ratelimited", "http3-post-connect-failure"}


def _check_retry_on(value: list[str] | None) -> list[str] | None:
    for item in value or []:
        if item not in _RETRY_ON:
            raise ValueError(f"unknown retry_on {item!r} (allowed: {', '.join(sorted(_RETRY_ON))})")
    return value


StatusCode = Annotated[int, Field(ge=100, le=599)]


class PolicyOverride(_Strict):
    """Any subset of the policy keys; used by a region or a model to override the defaults."""

    timeout: Duration | None = None
    per_try_timeout: Annotated[Duration, Field(gt=0)] | None = None
    num_retries: int | None = Field(None, ge=0, le=10)
    retry_on: list[str] | None = None
    retriable_status_codes: list[StatusCode] | None = None
    outlier_detection: OutlierDetection | None = None
    # Retried bodies must be buffered; larger ones get a 413 instead of a retry-less forward.
    max_request_bytes: int | None = Field(None, ge=1024, le=2**32 - 1)  # Envoy's buffer limit is a uint32
    hedge: StrictBool | None = None
    first_byte_timeout: Annotated[Duration, Field(gt=0)] | None = None
    connect_timeout: Annotated[Duration, Field(gt=0)] | None = None

    _known_retry_on = field_validator("retry_on")(_check_retry_on)


class Policy(_Strict):
    timeout: Duration = 60.0
    per_try_timeout: Duration = Field(20.0, gt=0)
    num_retries: int = Field(2, ge=0, le=10)
    retry_on: list[str] = ["5xx", "reset", "connect-failure", "retriable-status-codes"]
    retriable_status_codes: list[StatusCode] = [429]
    outlier_detection: OutlierDetection = OutlierDetection()
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024, le=2**32 - 1)
    # Idempotent verbs: on per_try_timeout also try the next region, without cancelling the first
    # attempt; the first good answer wins. Extra attempts stay capped by num_retries.
    hedge: StrictBool = False
    # Streaming verbs: an attempt with no response byte for this long goes to the next region
    # (before the first byte) or ends (mid-stream). None: per_try_timeout.
    first_byte_timeout: Annotated[Duration, Field(gt=0)] | None = None
    # TCP + TLS handshake to a region (Envoy's connect_timeout; per_try_timeout starts only once
    # connected). None: per_try_timeout, but at least 1 s and at most 5 s (resources/clusters.py).
    connect_timeout: Annotated[Duration, Field(gt=0)] | None = None

    _known_retry_on = field_validator("retry_on")(_check_retry_on)

    def merged(self, *overrides: PolicyOverride | None) -> Policy:
        data = self.model_dump()
        for override in overrides:
            if override is not None:
                # Only the keys the operator wrote; outlier_detection merges key by key, so a
                # region overriding consecutive_5xx keeps the default policy's interval.
                for key, value in override.model_dump(exclude_unset=True, exclude_none=True).items():
                    if isinstance(value, dict) and isinstance(data.get(key), dict):
                        data[key] = {**data[key], **value}
                    else:
                        data[key] = value
        return Policy.model_validate(data)


class HealthCheck(_Strict):
    """Active probes of a region's address (issue 17), so a region that stops answering is taken out
    by probes, not by client requests. `connect`: a TCP connect, plus the TLS handshake when the
    region uses TLS. `http`: also `GET /` with the region's host, healthy on any status below 500
    (no token, no quota); it also catches a region that accepts connections and never answers."""

    kind: Literal["connect", "http"] = "connect"
    interval: Duration = Field(2.0, gt=0)
    timeout: Duration = Field(1.0, gt=0)
    unhealthy_threshold: int = Field(2, ge=1, le=100)
    healthy_threshold: int = Field(2, ge=1, le=100)


class Listener(_Strict):
    address: Annotated[str, BeforeValidator(check_ip)] = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)


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
    if not _HEADER_NAME.match(value) or value.lower() in _RESERVED_HEADERS:
        raise ValueError(f"bad header name {value!r}")
    return value.lower()


class BackendCredential(_Strict):
    """What a custom backend is sent on every attempt. Never the gateway's Google access token
    unless asked for (`access_token`): a backend outside Google must not receive it."""

    type: Literal["none", "header", "id_token", "access_token"] = "none"
    header: Annotated[str, AfterValidator(_check_header_name)] = "authorization"  # type header
    file: str | None = None  # type header: the file holding the header's value (re-read on SIGHUP)
    prefix: str = ""  # type header: put before the file's content, e.g. "Bearer "
    audience: str | None = None  # type id_token: default https://{host} (what Cloud Run expects)


class Region(_Strict):
    # vertex: a Vertex AI region. custom: any HTTP(S) backend (vLLM on GKE, Cloud Run...) that
    # models name like a region; its path comes from the model's endpoints: entry or `path`.
    kind: Literal["vertex", "custom"] = "vertex"
    address: Address
    port: int = Field(443, ge=1, le=65535)
    tls: bool = True
    # default {region}-aiplatform.googleapis.com, filled in by RegionConfig
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


class Model(_Strict):
    default: StrictBool = False  # `default: yes` is a string in YAML 1.2; say so rather than "no default"
    endpoints: dict[str, Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int) else v)]] = {}
    publisher_model: str | None = None
    regions: list[str] = []
    policy: PolicyOverride | None = None
    auth: str | None = None  # a profile under auth.profiles; wins over the region's
    # failover: local region first, then its failover list. weighted: first attempts spread by
    # `weights`. least_request: spread by outstanding requests. Retries always go elsewhere.
    strategy: Literal["failover", "weighted", "least_request"] = "failover"
    weights: dict[str, Annotated[int, Field(ge=0, le=1000)]] = {}
    # Capacity tiers per region, tried in this order before the next region (publisher models):
    # dedicated = Provisioned Throughput only, shared = pay-as-you-go, priority = Priority PayGo,
    # default = no tier header (Vertex's own PT-then-spillover). Clients' tier headers are replaced.
    tiers: dict[str, Annotated[list[Literal["dedicated", "shared", "priority", "default"]],
                               Field(min_length=1)]] = {}

    @property
    def served_regions(self) -> list[str]:
        return list(self.endpoints) if self.endpoints else list(self.regions)


def _check_credentials(value: str) -> str:
    if value == "adc" or (value.startswith("service_account:") and len(value) > len("service_account:")):
        return value
    raise ValueError(f"bad credentials {value!r}: expected adc or service_account:/path/to/key.json")


class AuthProfile(_Strict):
    """One set of Google credentials; its access token is shared by every region that uses it."""

    credentials: Annotated[str, AfterValidator(_check_credentials)] = "adc"
    impersonate: str | None = None  # a service-account email: tokens are minted for it via IAM
    scopes: list[str] = ["https://www.googleapis.com/auth/cloud-platform"]


DEFAULT_PROFILE = "default"


class Auth(AuthProfile):
    refresh_margin: Duration = Field(300.0, gt=0)
    profiles: dict[str, AuthProfile] = {}  # other credentials, named by a region's or model's `auth:`

    def profile(self, name: str) -> AuthProfile:
        return self if name == DEFAULT_PROFILE else self.profiles[name]


# ---------------------------------------------------------------------- clients (who may call)

GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_JWKS_URI = "https://www.googleapis.com/oauth2/v3/certs"
# Identities end up in Envoy header matchers: no commas (the certificate list separator), no spaces.
_IDENTITY = re.compile(r"^[A-Za-z0-9._@+:/=~%-]+$")


def _check_identity(value: str) -> str:
    if value != "*" and not _IDENTITY.match(value):
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
    return value


def check_pem_file(value: Any) -> str:
    """The listener's certificate or key: a PEM file that exists here."""
    if b"-----BEGIN " not in _file_head(value):
        raise ValueError(f"{value!r} holds no PEM block (-----BEGIN ...)")
    return value


CaFile = Annotated[str, AfterValidator(check_ca_file)]
PemFile = Annotated[str, AfterValidator(check_pem_file)]


class JwtIssuer(_Strict):
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


class ClientTls(_Strict):
    """Client certificates on the listener (which then speaks HTTPS)."""

    # Files Envoy reads; like a region's ca_file they must exist where validate/serve run.
    ca_file: CaFile  # client certificates must chain to this CA
    cert_file: PemFile  # the listener's own certificate and key
    key_file: PemFile


class ClientGrant(_Strict):
    identities: list[Annotated[str, AfterValidator(_check_identity)]] = Field(min_length=1)
    models: list[str] | None = None  # default: every model
    regions: list[str] | None = None  # default: every region; never served (or failed over) elsewhere


class Clients(_Strict):
    jwt: dict[str, JwtIssuer] = {}
    mtls: ClientTls | None = None
    allow: dict[str, ClientGrant] = Field(min_length=1)


def _client_problems(raw: dict) -> list[tuple[tuple, str]]:
    """clients: cross-references (models and regions named by grants, a JWKS per issuer)."""
    clients = raw.get("clients")
    if not isinstance(clients, dict):
        return []
    out: list[tuple[tuple, str]] = []
    if not clients.get("jwt") and not clients.get("mtls"):
        out.append((("clients",), "give `jwt:` issuers and/or `mtls:`: how clients prove who they are"))
    for name, issuer in (clients.get("jwt") or {}).items() if isinstance(clients.get("jwt"), dict) else []:
        if not _NAME.match(str(name)):
            out.append((("clients", "jwt", name), f"bad issuer name {name!r}: use letters, digits, '-', '_', '.'"))
        if not isinstance(issuer, dict):
            continue
        uri, file = issuer.get("jwks_uri"), issuer.get("jwks_file")
        if uri and file:
            out.append((("clients", "jwt", name), "give either `jwks_uri:` or `jwks_file:`, not both"))
        elif not uri and not file and issuer.get("issuer") not in (GOOGLE_ISSUER, "accounts.google.com"):
            out.append((("clients", "jwt", name), "needs `jwks_uri:` or `jwks_file:` (the issuer's signing keys)"))
        if isinstance(uri, str) and not re.match(r"^https?://[^/\s:]+(:\d{1,5})?(/\S*)?$", uri):
            out.append((("clients", "jwt", name, "jwks_uri"), f"bad jwks_uri {uri!r}: expected http(s)://host[:port]/path"))
    models, regions = raw.get("models"), raw.get("regions")
    model_names = list(models) if isinstance(models, dict) else []
    region_names = list(regions) if isinstance(regions, dict) else []
    allow = clients.get("allow")
    for name, grant in allow.items() if isinstance(allow, dict) else []:
        if not _NAME.match(str(name)):
            out.append((("clients", "allow", name), f"bad grant name {name!r}: use letters, digits, '-', '_', '.'"))
        if not isinstance(grant, dict):
            continue
        for key, known in (("models", model_names), ("regions", region_names)):
            items = grant.get(key)
            for i, item in enumerate(items) if isinstance(items, list) else []:
                if item not in known:
                    out.append((("clients", "allow", name, key, i),
                                f"unknown {key[:-1]} {item!r} (defined: {', '.join(map(str, known)) or 'none'})"))
            if isinstance(items, list) and not items:
                out.append((("clients", "allow", name, key), f"empty list: leave `{key}` out to allow every {key[:-1]}"))
    return out
class OpenAI(_Strict):
    """The OpenAI-compatible front door (POST /v1/chat/completions). Its regions, their order
    and policy are each listed model's own: the door only says which models a client may name."""

    # Keys under `models:` of publisher models; a client names one in the body by its
    # publisher_model ("google/gemini-2.0-flash"). None: every publisher model; []: none.
    models: list[str] | None = None
    # Keys under `models:` of endpoint models whose container speaks the OpenAI API (vLLM, TGI):
    # served at /v1/models/{model}/chat/completions, /completions, /embeddings.
    endpoint_models: list[str] = []


class AccessLog(_Strict):
    """One JSON line per client request from every Envoy (never a header value, token or body)."""

    enabled: StrictBool = True
    path: str | None = Field(None, min_length=1)  # a file on the Envoy's host; default: Envoy's stdout
    sample_percent: float = Field(100.0, ge=0, le=100)


class Tracing(_Strict):
    """Envoy's OpenTelemetry tracer, exporting over OTLP/gRPC to `collector` (HOST:PORT)."""

    collector: str | None = None  # off when unset
    sample_percent: float = Field(100.0, ge=0, le=100)
    service_name: str = Field("vertex-gateway", min_length=1)

    _collector_address = field_validator("collector")(lambda v: _check_host_port(v) if v is not None else v)


class LoadReports(_Strict):
    """Envoys' load reports (LRS) to the control plane, and fleet-wide region avoidance."""

    interval: Duration = Field(1.0, ge=0.1, le=60)  # how often each Envoy reports
    window: Duration = Field(10.0, ge=1, le=600)  # reports older than this are forgotten
    avoid: StrictBool = True  # move a region most Envoys fail against to the back of every order
    error_ratio: float = Field(0.5, gt=0, le=1)  # an Envoy fails against a region at this share of errors
    min_errors: int = Field(3, ge=1)  # ... and at least this many failed attempts there in the window
    min_reporting_envoys: int = Field(2, ge=1)  # fewer Envoys reporting: never avoid
    hold: Duration = Field(30.0, ge=1, le=3600)  # avoided at least this long; doubles per relapse (x8 max)


class Observability(_Strict):
    access_log: AccessLog = AccessLog()
    tracing: Tracing = Tracing()
    load_reports: LoadReports = LoadReports()


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {value!r}: expected HOST:PORT")
    check_address(host.strip("[]"))
    return value


class RegionConfig(_Strict):
    # "id or number": an unquoted project number arrives as an int
    project: Annotated[str, BeforeValidator(check_project)]
    listener: Listener = Listener()
    regions: dict[str, Region]
    models: dict[str, Model]
    policy: Policy = Policy()
    auth: Auth = Auth()
    clients: Clients | None = None  # None: no client authentication (serve warns off loopback)
    openai: OpenAI = OpenAI()
    observability: Observability = Observability()

    def host_of(self, region: str) -> str:
        spec = self.regions[region]
        if spec.custom:
            return spec.host or spec.address  # an IP with TLS needs `host` (a rule says so)
        # The `global` location has no regional host name.
        default = "aiplatform.googleapis.com" if region == "global" else f"{region}-aiplatform.googleapis.com"
        return spec.host or default

    @property
    def vertex_regions(self) -> list[str]:
        """Regions an Envoy can be in (custom backends have no Envoy of their own)."""
        return [name for name, spec in self.regions.items() if not spec.custom]

    def backend_credential(self, region: str) -> BackendCredential:
        return self.regions[region].credential or BackendCredential()

    def credential_for(self, model: str, region: str) -> str | None:
        """The credential an attempt to `region` for `model` carries: an auth profile's name (its
        access token), `backend/{name}` (a custom backend's own header or ID token), or None."""
        if not self.regions[region].custom:
            return self.profile_for(model, region)
        kind = self.backend_credential(region).type
        if kind == "none":
            return None
        if kind == "access_token":
            return self.regions[region].auth or DEFAULT_PROFILE
        return f"backend/{region}"

    def backends_in_use(self) -> list[str]:
        """Custom backends some model uses whose credential is their own (a header or an ID token)."""
        return self.memo(("backends",), lambda: sorted(
            {r for spec in self.models.values() for r in spec.served_regions
             if self.regions[r].custom and self.backend_credential(r).type in ("header", "id_token")}))

    def audience_of(self, region: str) -> str:
        return self.backend_credential(region).audience or f"https://{self.host_of(region)}"

    @property
    def default_model(self) -> str:
        return next(name for name, model in self.models.items() if model.default)

    # The config is immutable, so what is derived from it is computed once (a reload with
    # 100 models x 40 regions asks for the same policy thousands of times).
    _memo: dict = PrivateAttr(default_factory=dict)
    # Regions the fleet's load reports say to try last (control_plane/lrs.py); never from the file.
    _avoided: frozenset = PrivateAttr(default_factory=frozenset)

    @property
    def avoided(self) -> frozenset[str]:
        return self._avoided

    def avoiding(self, regions: frozenset[str]) -> RegionConfig:
        """This config with `regions` tried last: one copy per set of regions, with memos of its
        own (failover orders, and what is built from them, differ)."""
        regions = frozenset(regions)
        if regions == self._avoided:
            return self

        def make() -> RegionConfig:
            copy = self.model_copy()
            copy._memo = {}
            copy._avoided = regions
            return copy
        return self.memo(("avoiding", regions), make)

    def memo(self, key: tuple, compute: Callable[[], T]) -> T:
        """compute() once per config and key; for derived values and shared built resources."""
        memo = self.__pydantic_private__["_memo"]  # not self._memo: pydantic's __getattr__ is slow
        try:
            return memo[key]
        except KeyError:
            value = memo[key] = compute()
            return value

    def memo_model(self, model: str, key: tuple, compute: Callable[[], T]) -> T:
        """memo() for what is built from one model's spec and the rest of the config, but from
        no other model: a reload whose edit leaves that model (and the rest) as it was takes
        it over from the config before (inherit)."""
        return self.memo(("model", model, *key), compute)

    def inherit(self, previous: RegionConfig) -> int:
        """Take over `previous`'s memo_model() values of every model whose spec is unchanged,
        if nothing outside the models changed either (a global edit rebuilds everything).
        Returns how many models were taken over."""
        if self._reuse_key() != previous._reuse_key():
            return 0
        before, now = previous._model_specs(), self._model_specs()
        same = {m for m in self.models if before.get(m) == now[m]}
        memo = self.__pydantic_private__["_memo"]
        for key, value in dict(previous.__pydantic_private__["_memo"]).items():  # a copy: read off the loop
            if key[0] == "model" and key[1] in same:
                memo.setdefault(key, value)
        return len(same)

    def _model_specs(self) -> dict[str, str]:
        """Each model's spec as JSON, once per config (compared when it is inherited from and
        when it inherits): dict equality ignores order, and order matters (pins, spreads)."""
        return self.memo(("model_specs",), lambda: {m: spec.model_dump_json() for m, spec in self.models.items()})

    def _reuse_key(self) -> tuple:
        """Everything but the models' own specs that a model's resources may depend on."""
        return self.memo(("reuse_key",), lambda: (
            self.model_dump_json(exclude={"models"}), self.default_model,
            list(self.openai_models().items()), self._avoided))

    def profile_for(self, model: str, region: str) -> str:
        """The credentials profile an attempt to `region` for `model` uses."""
        return self.models[model].auth or self.regions[region].auth or DEFAULT_PROFILE

    def profiles_in_use(self) -> list[str]:
        """Profiles whose access token some attempt carries (a backend's ID token is its own)."""
        def compute() -> list[str]:
            used = {self.credential_for(m, r) for m, spec in self.models.items() for r in spec.served_regions}
            return sorted(c for c in used if c is not None and not c.startswith("backend/"))
        return self.memo(("profiles",), compute)

    def policy_for(self, model: str, region: str) -> Policy:
        """Defaults, then the region's overrides, then the model's (the most specific wins).
        Pairs with the same overrides share one Policy object (most pairs have none), so what
        is built from a policy can be memoized by its identity."""
        region_override, model_override = self.regions[region].policy, self.models[model].policy
        return self.memo(("policy", id(region_override), id(model_override)),
                         lambda: self.policy.merged(region_override, model_override))

    def openai_models(self) -> dict[str, str]:
        """What POST /v1/chat/completions serves: the body's "model" -> the model key."""
        names = self.openai.models
        if names is None:
            names = [m for m, spec in self.models.items() if spec.publisher_model]
        return {self.models[m].publisher_model: m for m in names}  # type: ignore[misc]

    def openai_endpoint_models(self) -> list[str]:
        return list(self.openai.endpoint_models)

    def serves_openai(self, model: str) -> bool:
        """Whether the model is reachable on an OpenAI-compatible path (its clusters rewrite those)."""
        served = self.memo(("openai_served",), lambda: set(self.openai_models().values())
                           | set(self.openai_endpoint_models()))
        return model in served

    @property
    def version(self) -> str:
        return self.memo(("version",), lambda: hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12])


@dataclass(frozen=True)
class Problem:
    file: str
    path: str  # key path, e.g. regions.us-east4.failover[0]
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top)'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_config(path: str | Path, limits: Limits = Limits()) -> RegionConfig:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), "", f"cannot read: {exc.strerror or exc}")]) from exc
    return parse_config_bytes(data, str(path), limits)


def parse_config_bytes(data: bytes, file: str = "regions.yaml", limits: Limits = Limits()) -> RegionConfig:
    try:
        text = yamlsafe.decode(data, limits)
    except YamlRefused as exc:
        raise ConfigError([Problem(file, "", exc.message)]) from exc
    return parse_config(text, file, limits)


def parse_config(text: str, file: str = "regions.yaml", limits: Limits = Limits()) -> RegionConfig:
    try:
        raw = yamlsafe.load(text, limits)
    except YamlRefused as exc:
        raise ConfigError([Problem(file, "", exc.message, exc.line)]) from exc
    if raw is None or (isinstance(raw, (dict, list, str)) and not raw):
        raise ConfigError([Problem(file, "", "the file is empty: expected project, regions and models")])
    if not isinstance(raw, dict):
        raise ConfigError([Problem(file, "", f"expected a mapping at the top, got {'a list' if isinstance(raw, list) else type(raw).__name__}")])

    found: list[tuple[tuple, str]] = []
    config: RegionConfig | None = None
    try:
        config = RegionConfig.model_validate(raw)
    except ValidationError as exc:
        found += [(tuple(error["loc"]), _message(error)) for error in exc.errors()]
    found += _cross_reference_problems(raw) + _openai_problems(raw)
    if found:
        line_of = yamlsafe.line_finder(text)  # the slow, line-numbered parse: only to report
        problems = [Problem(file, _key_path(loc), message, line_of(loc)) for loc, message in found]
        raise ConfigError(sorted(_dedupe(problems), key=lambda p: (p.line or 0, p.path)))
    assert config is not None
    return config


def _cross_reference_problems(raw: dict) -> list[tuple[tuple, str]]:
    """Rules that relate keys to each other; tolerant of a structurally broken file."""
    out: list[tuple[tuple, str]] = _client_problems(raw)
    regions = raw.get("regions")
    models = raw.get("models")
    region_names = list(regions) if isinstance(regions, dict) else []
    known = ", ".join(map(str, region_names)) or "none"

    if "regions" in raw and isinstance(regions, dict) and not regions:
        out.append((("regions",), "no regions defined"))
    custom = {name for name, region in (regions or {}).items() if isinstance(regions, dict)
              and isinstance(region, dict) and region.get("kind") == "custom"}
    for name, region in (regions or {}).items() if isinstance(regions, dict) else []:
        if not _NAME.match(str(name)):
            out.append((("regions", name), f"bad region name {name!r}"))
        if isinstance(region, dict):
            out += _backend_kind_problems(name, region, name in custom)
        failover = region.get("failover") if isinstance(region, dict) else None
        if not isinstance(failover, list):
            continue
        seen: set = set()
        for i, target in enumerate(failover):
            loc = ("regions", name, "failover", i)
            if not isinstance(target, str):
                continue  # pydantic reports the type; a nested list is unhashable below
            if target == name:
                out.append((loc, f"region {name!r} cannot fail over to itself"))
            elif target not in region_names:
                out.append((loc, f"unknown region {target!r} (defined: {known})"))
            elif target in seen:
                out.append((loc, f"region {target!r} listed twice"))
            seen.add(target)

    auth = raw.get("auth") if isinstance(raw.get("auth"), dict) else {}
    profiles = auth.get("profiles") if isinstance(auth.get("profiles"), dict) else {}
    if DEFAULT_PROFILE in profiles:
        out.append((("auth", "profiles", DEFAULT_PROFILE), "'default' names the top-level auth; pick another name"))
    for section, entries in (("regions", regions), ("models", models)):
        for name, entry in entries.items() if isinstance(entries, dict) else []:
            wanted = entry.get("auth") if isinstance(entry, dict) else None
            if isinstance(wanted, str) and wanted != DEFAULT_PROFILE and wanted not in profiles:
                out.append(((section, name, "auth"), f"unknown auth profile {wanted!r} "
                                                     f"(defined under auth.profiles: {', '.join(profiles) or 'none'})"))

    if "models" in raw and isinstance(models, dict) and not models:
        out.append((("models",), "no models defined"))
    if not isinstance(models, dict):
        return out
    defaults = [name for name, m in models.items() if isinstance(m, dict) and m.get("default") is True]
    if models and not defaults:
        out.append((("models",), "no default model: mark exactly one model `default: true` (it serves POST /predict)"))
    for extra in defaults[1:]:
        out.append((("models", extra, "default"), f"more than one default model ({', '.join(defaults)})"))

    owner_of_id: dict[str, str] = {}
    for name, model in models.items():
        if not _NAME.match(str(name)):
            out.append((("models", name), f"bad model name {name!r}: use letters, digits, '-', '_', '.'"))
        if not isinstance(model, dict):
            continue
        endpoints, publisher = model.get("endpoints"), model.get("publisher_model")
        if not endpoints and not publisher:
            out.append((("models", name), "needs `endpoints:` (region -> endpoint id) or `publisher_model:`"))
        if endpoints and publisher:
            out.append((("models", name), "give either `endpoints:` or `publisher_model:`, not both"))
        if publisher is not None and not re.match(r"^[a-z0-9-]+/[A-Za-z0-9._@-]+$", str(publisher)):
            out.append((("models", name, "publisher_model"), f"bad publisher model {publisher!r}: expected PUBLISHER/MODEL"))
        if publisher and not model.get("regions"):
            out.append((("models", name, "regions"), "a publisher model needs `regions:`"))
        served = list(endpoints) if isinstance(endpoints, dict) and endpoints else \
            [r for r in model.get("regions") or [] if isinstance(r, str)] if isinstance(model.get("regions"), list) else []
        weights = model.get("weights")
        if model.get("strategy") == "weighted":
            if not isinstance(weights, dict) or not weights:
                out.append((("models", name, "weights"), "strategy weighted needs `weights:` (region -> weight)"))
            else:
                for region in served:
                    if region not in weights:
                        out.append((("models", name, "weights"), f"no weight for region {region!r}, which "
                                                                 f"serves this model (0 drains it)"))
                if all(w == 0 for w in weights.values() if isinstance(w, int)):
                    out.append((("models", name, "weights"), "every weight is 0: nothing would serve the model"))
        elif weights:
            out.append((("models", name, "weights"), "weights apply only with `strategy: weighted`"))
        for region in weights if isinstance(weights, dict) else []:
            if region not in served:
                out.append((("models", name, "weights", region), f"region {region!r} does not serve this model"))
        tiers = model.get("tiers")
        if isinstance(tiers, dict) and tiers:
            if model.get("strategy") == "least_request":
                out.append((("models", name, "tiers"), "tiers apply with strategy failover or weighted"))
            for region, order in tiers.items():
                if region not in served:
                    out.append((("models", name, "tiers", region), f"region {region!r} does not serve this model"))
                if isinstance(order, list) and len(order) != len(set(map(str, order))):
                    out.append((("models", name, "tiers", region), "a tier is listed twice"))
        for i, region in enumerate(model.get("regions") or []) if isinstance(model.get("regions"), list) else []:
            if region not in region_names:
                out.append((("models", name, "regions", i), f"unknown region {region!r} (defined: {known})"))
        listed = model.get("regions") if publisher and isinstance(model.get("regions"), list) else []
        for i, region in enumerate(listed):
            if isinstance(region, str) and region in custom and not regions[region].get("path"):
                out.append((("models", name, "regions", i), f"custom backend {region!r} serves this publisher model "
                                                            f"but has no `path:` (regions.{region}.path)"))
        for region, endpoint_id in (endpoints or {}).items() if isinstance(endpoints, dict) else []:
            loc = ("models", name, "endpoints", region)
            if region not in region_names:
                out.append((loc, f"unknown region {region!r} (defined: {known})"))
            if region in custom:  # a custom backend is given its path here, not an endpoint id
                try:
                    check_upstream_path(endpoint_id)
                except ValueError as exc:
                    out.append((loc, f"custom backend {region!r}: {exc}"))
            elif not re.match(r"^\d{1,19}$", str(endpoint_id)):
                out.append((loc, f"bad endpoint id {endpoint_id!r}: expected the numeric Vertex endpoint id"))
            elif str(endpoint_id) in owner_of_id and owner_of_id[str(endpoint_id)] != name:
                out.append((loc, f"endpoint id {endpoint_id} is also used by model {owner_of_id[str(endpoint_id)]!r}"))
            else:
                owner_of_id[str(endpoint_id)] = name
    return out


def _backend_kind_problems(name: Any, region: dict, custom: bool) -> list[tuple[tuple, str]]:
    """What a Vertex region and a custom backend may and must have."""
    out: list[tuple[tuple, str]] = []
    if not custom:
        for key in ("path", "credential"):
            if key in region:
                out.append((("regions", name, key), f"`{key}` applies only to `kind: custom` backends"))
        return out
    if region.get("failover"):
        out.append((("regions", name, "failover"), "a custom backend has no Envoy of its own, so no failover "
                                                   "list: name it in the Vertex regions' failover lists"))
    address = region.get("address")
    if region.get("tls", True) is not False and not region.get("host") and isinstance(address, str) \
            and is_ip(address.strip()):
        out.append((("regions", name, "host"), "a custom backend at an IP address with TLS needs `host:` "
                                               "(the name its certificate is checked against, and the SNI)"))
    credential = region.get("credential")
    if isinstance(credential, dict):
        kind = credential.get("type", "none")
        if kind == "header" and not credential.get("file"):
            out.append((("regions", name, "credential", "file"), "credential type header needs `file:` "
                                                                 "(the file holding the header's value)"))
        for key, only in (("file", "header"), ("prefix", "header"), ("header", "header"), ("audience", "id_token")):
            if key in credential and kind != only:
                out.append((("regions", name, "credential", key), f"`{key}` applies only to credential type {only}"))
    return out


def _openai_problems(raw: dict) -> list[tuple[tuple, str]]:
    """`openai.models` names publisher models, each body "model" naming exactly one of them."""
    out: list[tuple[tuple, str]] = []
    openai, models = raw.get("openai"), raw.get("models")
    if not isinstance(models, dict):
        return out
    listed = openai.get("models") if isinstance(openai, dict) else None
    names = listed if isinstance(listed, list) else \
        [m for m, spec in models.items() if isinstance(spec, dict) and spec.get("publisher_model")]
    owner: dict[str, str] = {}
    for i, name in enumerate(names):
        loc = ("openai", "models", i) if isinstance(listed, list) else ("models", name, "publisher_model")
        spec = models.get(name) if isinstance(name, str) else None
        if not isinstance(spec, dict):
            out.append((loc, f"unknown model {name!r} (defined: {', '.join(map(str, models)) or 'none'})"))
        elif not spec.get("publisher_model"):
            out.append((loc, f"model {name!r} has no `publisher_model:`; an endpoint model is served at "
                             f"/v1/models/{name}/chat/completions instead"))
        elif str(spec["publisher_model"]) in owner:
            out.append((loc, f"models {owner[str(spec['publisher_model'])]!r} and {name!r} are both "
                             f"{spec['publisher_model']}: POST /v1/chat/completions could not tell them apart "
                             f"(list one under openai.models)"))
        else:
            owner[str(spec["publisher_model"])] = name
    served = openai.get("endpoint_models") if isinstance(openai, dict) else None
    for i, name in enumerate(served if isinstance(served, list) else []):
        spec = models.get(name) if isinstance(name, str) else None
        if not isinstance(spec, dict):
            out.append((("openai", "endpoint_models", i),
                        f"unknown model {name!r} (defined: {', '.join(map(str, models)) or 'none'})"))
        elif not spec.get("endpoints"):
            out.append((("openai", "endpoint_models", i), f"model {name!r} has no `endpoints:`; a publisher model "
                                                          f"is served at POST /v1/chat/completions (openai.models)"))
    return out


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(error: dict) -> str:
    """A validation error in the project's words (the library's are about Python types)."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {_shown(got)})"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    words = _WORDS.get(kind)
    if words is None:
        return f"{error['msg']}{shown}"
    return words.format(**{k: _shown(v) for k, v in ctx.items()}) + shown


_WORDS = {
    "int_type": "expected a whole number", "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "dict_type": "expected a mapping (key: value lines)", "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "list_type": "expected a list",
    "greater_than_equal": "must be at least {ge}", "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}", "less_than": "must be less than {lt}",
    "string_too_short": "must not be empty", "too_short": "must not be empty",
    "literal_error": "must be one of {expected}",
}


def _shown(value: Any) -> str:
    """A value as the operator wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for problem in problems:
        key = (problem.path, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out

