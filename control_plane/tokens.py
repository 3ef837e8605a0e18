"""Google access tokens: one refresher per auth profile, ahead of expiry, off the event loop.
Custom backends' own credentials ride the same machinery: a Google ID token for an audience
(IdTokenSource) or a header value read from a file (HeaderFileSource, re-read every 5 minutes
and on SIGHUP).

The control plane owns the credentials; Envoy only ever sees the current token, as an SDS
secret used by credential_injector. Token values never reach a log line, a debug endpoint
or a metric: only expiry times, refresh times and errors do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import google.auth
import google.auth.transport.requests
from google.auth import impersonated_credentials
from google.oauth2 import id_token, service_account

from .config import AuthProfile
from .metrics import Metrics
from .text import first_line

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
SLOW_FIRST_TOKEN = 5.0  # say so in the log if the first token takes longer than this


def make_credentials(profile: AuthProfile):
    """google-auth credentials for a profile (blocking: reads files, may probe the metadata server)."""
    if profile.credentials == "adc":
        base, _project = google.auth.default(scopes=profile.scopes)
    else:
        path = profile.credentials.removeprefix("service_account:")
        base = service_account.Credentials.from_service_account_file(path, scopes=profile.scopes)
    if profile.impersonate:
        return impersonated_credentials.Credentials(
            source_credentials=base, target_principal=profile.impersonate, target_scopes=profile.scopes,
            lifetime=3600)
    return base


@dataclass(frozen=True)
class IdTokenSource:
    """A Google ID token for `audience` (what Cloud Run and IAP check), minted with a profile's credentials."""

    profile: AuthProfile
    audience: str

    def describe(self) -> str:
        via = self.profile.credentials + (f" + impersonate {self.profile.impersonate}"
                                          if self.profile.impersonate else "")
        return f"id_token for {self.audience} via {via}"


@dataclass(frozen=True)
class HeaderFileSource:
    """A header value kept in a file (an API key): sent as prefix + the file's content."""

    path: str
    header: str = "authorization"
    prefix: str = ""

    def describe(self) -> str:
        return f"header {self.header} from file {self.path}"


Source = AuthProfile | IdTokenSource | HeaderFileSource


class FileHeader:
    """Credentials-like (refresh/token/expiry) for HeaderFileSource; never expires."""

    expiry = None

    def __init__(self, source: HeaderFileSource):
        self._path = Path(source.path)
        self.token: str | None = None

    def refresh(self, _request) -> None:
        value = self._path.read_text().strip()  # OSError names the path only, never the content
        if not value:
            raise ValueError(f"{self._path} is empty")
        if any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"{self._path} holds more than one line")
        self.token = value


def make_id_token_credentials(source: IdTokenSource):
    """google-auth ID-token credentials for the profile (blocking, like make_credentials)."""
    profile = source.profile
    if profile.impersonate:
        return impersonated_credentials.IDTokenCredentials(
            make_credentials(profile), target_audience=source.audience, include_email=True)
    if profile.credentials == "adc":  # a key file named by GOOGLE_APPLICATION_CREDENTIALS, or the metadata server
        return id_token.fetch_id_token_credentials(source.audience)
    path = profile.credentials.removeprefix("service_account:")
    return service_account.IDTokenCredentials.from_service_account_file(path, target_audience=source.audience)


def make_source_credentials(source: Source, factory: Callable[[AuthProfile], object] | None = None):
    if isinstance(source, IdTokenSource):
        return make_id_token_credentials(source)
    if isinstance(source, HeaderFileSource):
        return FileHeader(source)
    return (factory or make_credentials)(source)


def _header_value(source: Source, token: str) -> str:
    """What the SDS secret of a backend credential holds; an access token gets "Bearer " later."""
    if isinstance(source, IdTokenSource):
        return f"Bearer {token}"
    if isinstance(source, HeaderFileSource):
        return source.prefix + token
    return token


def _kind(source: Source) -> str:
    return "id_token" if isinstance(source, IdTokenSource) else \
        "header" if isinstance(source, HeaderFileSource) else "access_token"


def _what(name: str, source: Source) -> str:
    """How log lines name a credential."""
    if isinstance(source, AuthProfile):
        return f"access token of auth profile {name!r}"
    return f"{_kind(source).replace('_', ' ')} of custom backend {name.removeprefix('backend/')!r}"


@dataclass
class TokenState:
    """What /debug/tokens shows for one profile. Never holds anything secret."""

    profile: str
    source: str  # "adc", "service_account:/path", "+ impersonate sa@..." (no secrets)
    expiry: float | None = None  # unix time
    last_refresh: float | None = None
    last_error: str = ""
    last_error_at: float | None = None
    failures_in_a_row: int = 0
    refreshes_ok: int = 0
    refreshes_failed: int = 0
    degraded: bool = False  # the token in use has expired and no new one could be had
    kind: str = "access_token"  # or id_token, header (a custom backend's own credential)

    def to_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        return {
            "profile": self.profile,
            "kind": self.kind,
            "source": self.source,
            "state": "degraded" if self.degraded else ("ok" if self.expiry or self.last_refresh else "pending"),
            "expiry": _iso(self.expiry),
            "seconds_to_expiry": round(self.expiry - now, 1) if self.expiry else None,
            "last_refresh": _iso(self.last_refresh),
            "last_error": self.last_error or None,
            "last_error_at": _iso(self.last_error_at),
            "refreshes_ok": self.refreshes_ok,
            "refreshes_failed": self.refreshes_failed,
        }


@dataclass
class _Source:
    profile: Source
    state: TokenState
    credentials: object | None = None
    token: str = field(default="", repr=False)
    task: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class TokenRefresher:
    """Keeps a fresh token per profile and hands the set to `on_tokens` whenever one changes."""

    def __init__(self, profiles: dict[str, Source], refresh_margin: float,
                 on_tokens: Callable[[dict[str, str]], None], metrics: Metrics,
                 credentials_factory: Callable[[AuthProfile], object] = make_credentials):
        self._margin = refresh_margin
        self._on_tokens = on_tokens
        self._metrics = metrics
        self._factory = credentials_factory
        self._sources: dict[str, _Source] = {}
        self._request = google.auth.transport.requests.Request()
        self._running = False
        self.update(profiles, refresh_margin)

    @property
    def states(self) -> list[TokenState]:
        return [s.state for _, s in sorted(self._sources.items())]

    def degraded_reasons(self) -> list[str]:
        return [f"{_what(name, s.profile)} expired; last error: {s.state.last_error}"
                for name, s in self._sources.items() if s.state.degraded]

    def update(self, profiles: dict[str, Source], refresh_margin: float) -> None:
        """Follow a config reload: start refreshers for new or changed profiles, stop removed ones."""
        self._margin = refresh_margin
        for name in list(self._sources):
            if name not in profiles:
                self._stop(name)
        for name, profile in profiles.items():
            old = self._sources.get(name)
            if old is not None and old.profile == profile:
                continue
            if isinstance(profile, AuthProfile):
                text = profile.credentials + (f" + impersonate {profile.impersonate}" if profile.impersonate else "")
            else:
                text = profile.describe()
            source = _Source(profile, TokenState(name, text, kind=_kind(profile)))
            if old is not None and type(old.profile) is type(profile):
                # an edited profile: its still-valid token stays in use until the new credentials' first
                self._stop(name, forget=False)
                source.token, source.state.expiry = old.token, old.state.expiry
            else:  # new, or a backend credential of another kind: never its old value, start afresh
                if old is not None:
                    self._stop(name)
                if not isinstance(profile, HeaderFileSource):  # a file's value has no expiry to report
                    self._metrics.token_expiry.labels(name).set_function(self._seconds_left(name))
            self._sources[name] = source
        if self._running:
            self._start_missing()

    def start(self) -> None:
        self._running = True
        self._start_missing()

    async def stop(self) -> None:
        self._running = False
        for name in list(self._sources):
            self._stop(name, forget=False)

    def refresh_now(self, reload_credentials: bool = False) -> None:
        """Refresh every profile now (SIGHUP, credential rotation); optionally re-read key files."""
        for source in self._sources.values():
            if reload_credentials:
                source.credentials = None
            source.wake.set()

    # ------------------------------------------------------------------ internals

    def _seconds_left(self, name: str) -> Callable[[], float]:
        def value() -> float:
            source = self._sources.get(name)
            return max(0.0, source.state.expiry - time.time()) if source and source.state.expiry else 0.0
        return value

    def _start_missing(self) -> None:
        for name, source in self._sources.items():
            if source.task is None:
                source.task = asyncio.create_task(self._run(name, source), name=f"token-{name}")

    def _stop(self, name: str, forget: bool = True) -> None:
        source = self._sources.get(name)
        if source and source.task:
            source.task.cancel()
            source.task = None
        if forget:
            gone = self._sources.pop(name, None)
            if gone is not None and not isinstance(gone.profile, HeaderFileSource):
                self._metrics.token_expiry.remove(name)
            self._publish()

    def _publish(self) -> None:
        self._on_tokens({name: s.token for name, s in self._sources.items() if s.token})

    async def _run(self, name: str, source: _Source) -> None:
        backoff = BACKOFF_INITIAL
        slow_warning = asyncio.get_running_loop().call_later(
            SLOW_FIRST_TOKEN, lambda: log.warning(
                "still waiting for the first %s (%s); Envoys get no config "
                "until it arrives", _what(name, source.profile), source.state.source) if not source.token else None)
        try:
            while True:
                try:
                    await self._refresh(name, source)
                    backoff = BACKOFF_INITIAL
                    slow_warning.cancel()
                    delay = _refresh_delay(source.state.expiry, self._margin)
                except Exception as exc:  # any failure of google-auth: keep the old token, retry later
                    self._record_failure(name, source, exc)
                    delay = backoff * random.uniform(0.5, 1.5)  # jitter: replicas must not retry in step
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    if source.state.expiry:  # wake up at expiry to report it, whatever the backoff says
                        delay = min(delay, max(0.5, source.state.expiry - time.time()))
                source.wake.clear()
                try:  # sleep until the next refresh is due, or until refresh_now() wakes us
                    await asyncio.wait_for(source.wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            slow_warning.cancel()

    async def _refresh(self, name: str, source: _Source) -> None:
        if source.credentials is None:
            source.credentials = await asyncio.to_thread(make_source_credentials, source.profile, self._factory)
        credentials = source.credentials
        await asyncio.to_thread(credentials.refresh, self._request)  # blocking HTTP: off the loop
        if not credentials.token:
            raise RuntimeError("the token endpoint returned an empty token")
        token = _header_value(source.profile, credentials.token)
        expiry = credentials.expiry.replace(tzinfo=dt.timezone.utc).timestamp() if credentials.expiry else None
        state = source.state
        recovered = state.failures_in_a_row > 0
        state.expiry, state.last_refresh = expiry, time.time()
        state.refreshes_ok += 1
        state.failures_in_a_row, state.degraded = 0, False
        self._metrics.token_refreshes.labels(name, "ok").inc()
        if recovered:
            log.info("%s refreshed again after failures", _what(name, source.profile))
        if token != source.token:
            source.token = token
            self._publish()
        log.debug("%s refreshed; expires %s", _what(name, source.profile), _iso(expiry))

    def _record_failure(self, name: str, source: _Source, exc: Exception) -> None:
        state = source.state
        state.last_error = f"{type(exc).__name__}: {first_line(exc)}"
        state.last_error_at = time.time()
        state.refreshes_failed += 1
        state.failures_in_a_row += 1
        self._metrics.token_refreshes.labels(name, "failed").inc()
        what = _what(name, source.profile)
        # A value without expiry (a header file) stays good when re-reading it fails.
        expired = (not state.expiry and not source.token) or (state.expiry is not None and state.expiry <= time.time())
        if state.failures_in_a_row == 1 and not expired and source.token:
            log.warning("refreshing the %s failed (the current one is valid until %s; retrying): %s",
                        what, _iso(state.expiry) or "replaced", state.last_error)
        if expired and source.token and not state.degraded:
            state.degraded = True  # one error line per state change, not per retry
            log.error("%s EXPIRED and could not be refreshed; requests that need it will be refused: %s",
                      what, state.last_error)
        elif not source.token and state.failures_in_a_row == 1:
            log.error("cannot get the first %s: %s", what, state.last_error)


def _refresh_delay(expiry: float | None, margin: float) -> float:
    """Seconds until the next refresh: `margin` before expiry; for tokens that live shorter
    than the margin (tests, odd issuers), at 80% of their life."""
    if expiry is None:
        return 300.0
    left = expiry - time.time()
    return max(1.0, left - margin if left > margin else left * 0.8)



def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
