"""Field types and bounds shared by the sections: durations, addresses, host names, project ids,
files Envoy reads; and the strict base every section model derives from."""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import ssl
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from .problems import as_written

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# A project id, optionally domain-scoped (example.com:my-project), or a project number.
_PROJECT = re.compile(r"^(?:[a-z][a-z0-9.-]{0,62}:)?[a-z](?:[a-z0-9-]{0,28}[a-z0-9])?$|^[0-9]{1,20}$")
# Envoy's largest Duration it takes (about 292 years: int64 nanoseconds, less one second, as
# measured with `envoy --mode validate`); protobuf's own limit is higher.
MAX_DURATION_SECONDS = 9_223_372_035


def parse_duration(value: Any) -> float:
    """'60s', '250ms', '5m', '1h' or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {as_written(value)}: use a number with a unit, e.g. 20s or 500ms")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value).strip())
        if not match:
            raise ValueError(f"bad duration {as_written(value)}: use a number with a unit, e.g. 20s or 500ms")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {as_written(value)}: must be a finite number of seconds")
    if seconds < 0:
        raise ValueError(f"bad duration {as_written(value)}: must not be negative")
    if 0 < seconds < 1e-9:  # Envoy's Duration would say 0, which most fields refuse
        raise ValueError(f"bad duration {as_written(value)}: below Envoy's resolution of 1 ns")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"bad duration {as_written(value)}: beyond Envoy's limit of {MAX_DURATION_SECONDS:,} s")
    return seconds


def is_hostname(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= 253 and all(_HOSTNAME_LABEL.fullmatch(label) for label in labels) \
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
        raise ValueError(f"bad address {as_written(value)}: expected an IP address or a hostname")
    text = value.strip()
    if not (is_ip(text) or is_hostname(text)):
        raise ValueError(f"bad address {value!r}: expected an IP address or a hostname")
    return text


def check_ip(value: Any) -> str:
    """An address Envoy binds: an IP literal (Envoy does not resolve listener addresses)."""
    if not isinstance(value, str) or not is_ip(value.strip()):
        raise ValueError(f"bad listener address {as_written(value)}: expected an IP address such as 0.0.0.0 or 10.0.0.5")
    return value.strip()


def check_hostname(value: Any) -> str:
    """A DNS name: sent as the Host header and the TLS SNI, so no IP, space or control character."""
    if not isinstance(value, str) or not is_hostname(value):
        raise ValueError(f"bad host {as_written(value)}: expected a DNS name such as us-central1-aiplatform.googleapis.com")
    return value


def check_project(value: Any) -> str:
    """A GCP project id or number: it goes into every upstream path, so nothing else may."""
    if type(value) is int and value > 0:  # an unquoted project number
        return str(value)
    if isinstance(value, str) and _PROJECT.fullmatch(value):
        return value
    if value == "":
        raise ValueError("must not be empty: give the Vertex project id or number")
    raise ValueError(f"bad project {as_written(value)}: expected a project id (lowercase letters, digits and "
                     "hyphens, starting with a letter, at most 30 characters) or a project number")


def file_head(path: str, label: str = "") -> bytes:
    """The first 4 MiB of a file Envoy will read, or a ValueError saying why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4 * 1024 * 1024)
    except OSError as exc:
        raise ValueError(f"cannot read {label}{path!r}: {exc.strerror or exc}") from exc


def check_plain_text(value: str) -> str:
    """Text that goes into a header value, a file name or a span as is: no control character."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"bad text {value!r}: no control character (newline, tab, ...)")
    return value


PlainText = Annotated[str, AfterValidator(check_plain_text)]


def key_pair_problem(cert_file: str, key_file: str) -> str | None:
    """Why Envoy (or gRPC) could not load this certificate with this private key, or None. An
    unreadable file is left to the caller's own check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file, password="")  # an encrypted key fails, never prompts
    except ssl.SSLError as exc:
        detail = f" ({exc.reason})" if exc.reason and exc.reason != "PEM lib" else ""  # "PEM lib" says no more
        return f"not a PEM certificate and its unencrypted private key{detail}"
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_ca_file(value: Any) -> str:
    """A file of PEM CA certificates that exists here: Envoy would reject the cluster otherwise."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"bad ca_file {as_written(value)}: expected the path of a PEM file of CA certificates")
    try:
        stat = os.stat(value)
    except OSError as exc:
        raise ValueError(f"cannot read ca_file {value!r}: {exc.strerror or exc}") from exc
    problem = _ca_file_problem(value, stat.st_mtime_ns, stat.st_size)
    if problem:
        raise ValueError(problem)
    return value


@functools.lru_cache(maxsize=64)
def _ca_file_problem(path: str, mtime_ns: int, size: int) -> str | None:
    """Why this version of the file is no trust store OpenSSL (and so Envoy) loads, or None.
    Once per file version: the system bundle takes 60 ms, and every region may name it."""
    if b"-----BEGIN CERTIFICATE-----" not in file_head(path, "ca_file "):
        return f"ca_file {path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError:
        return (f"ca_file {path!r} does not load as PEM certificates (a block cut short or damaged?): "
                "Envoy would refuse what uses it")
    return None


Duration = Annotated[float, BeforeValidator(parse_duration)]
Address = Annotated[str, BeforeValidator(check_address)]


class Strict(BaseModel):
    # strict: `port: true` is not 1 and `num_retries: "2"` is not 2; say what was meant instead.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
