"""observability: access logs, tracing, and the Envoys' load reports (fleet-wide region avoidance)."""

from __future__ import annotations

from pydantic import Field, StrictBool, field_validator

from .fields import Duration, PlainText, Strict, check_address


class AccessLog(Strict):
    """One JSON line per client request from every Envoy (never a header value, token or body)."""

    enabled: StrictBool = True
    path: PlainText | None = Field(None, min_length=1)  # a file on the Envoy's host; default: Envoy's stdout

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"bad path {value!r}: an absolute path on the Envoys' hosts (Envoy opens it as given)")
        return value
    sample_percent: float = Field(100.0, ge=0, le=100)


class Tracing(Strict):
    """Envoy's OpenTelemetry tracer, exporting over OTLP/gRPC to `collector` (HOST:PORT)."""

    collector: str | None = None  # off when unset
    sample_percent: float = Field(100.0, ge=0, le=100)
    service_name: PlainText = Field("vertex-gateway", min_length=1)

    _collector_address = field_validator("collector")(lambda v: _check_host_port(v) if v is not None else v)


class LoadReports(Strict):
    """Envoys' load reports (LRS) to the control plane, and fleet-wide region avoidance."""

    interval: Duration = Field(1.0, ge=0.1, le=60)  # how often each Envoy reports
    window: Duration = Field(10.0, ge=1, le=600)  # reports older than this are forgotten
    avoid: StrictBool = True  # move a region most Envoys fail against to the back of every order
    error_ratio: float = Field(0.5, gt=0, le=1)  # an Envoy fails against a region at this share of errors
    min_errors: int = Field(3, ge=1)  # ... and at least this many failed attempts there in the window
    min_reporting_envoys: int = Field(2, ge=1)  # fewer Envoys reporting: never avoid
    hold: Duration = Field(30.0, ge=1, le=3600)  # avoided at least this long; doubles per relapse (x8 max)


class Observability(Strict):
    access_log: AccessLog = AccessLog()
    tracing: Tracing = Tracing()
    load_reports: LoadReports = LoadReports()


def _check_host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {value!r}: expected HOST:PORT")
    check_address(host.strip("[]"))
    return value
