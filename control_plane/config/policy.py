"""policy: (and a region's or model's override of it): timeouts, retries, outlier detection, hedging."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictBool, field_validator

from .fields import Duration, Strict


class OutlierDetection(Strict):
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


class PolicyOverride(Strict):
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


class Policy(Strict):
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
