"""Google access tokens: one refresher per auth profile, ahead of expiry, off the event loop.

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

import google.auth
import google.auth.transport.requests
from google.auth import impersonated_credentials
from google.oauth2 import service_account

from .config import AuthProfile
from .metrics import Metrics

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

    def to_dict(self, now: float | None = None) -> dict:
        now = time.time() if now is None else now
        return {
            "profile": self.profile,
            "source": self.source,
            "state": "degraded" if self.degraded else ("ok" if self.expiry else "pending"),
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
    profile: AuthProfile
    state: TokenState
    credentials: object | None = None
    token: str = field(default="", repr=False)
    task: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class TokenRefresher:
    """Keeps a fresh token per profile and hands the set to `on_tokens` whenever one changes."""

    def __init__(self, profiles: dict[str, AuthProfile], refresh_margin: float,
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
        return [f"access token of auth profile {s.state.profile!r} expired; last error: {s.state.last_error}"
                for s in self._sources.values() if s.state.degraded]

    def update(self, profiles: dict[str, AuthProfile], refresh_margin: float) -> None:
        """Follow a config reload: start refreshers for new or changed profiles, stop removed ones."""
        self._margin = refresh_margin
        for name in list(self._sources):
            if name not in profiles:
                self._stop(name)
        for name, profile in profiles.items():
            old = self._sources.get(name)
            if old is not None and old.profile == profile:
                continue
            text = profile.credentials + (f" + impersonate {profile.impersonate}" if profile.impersonate else "")
            source = _Source(profile, TokenState(name, text))
            if old is None:
                self._metrics.token_expiry.labels(name).set_function(self._seconds_left(name))
            else:  # an edited profile: its still-valid token stays in use until the new credentials' first
                self._stop(name, forget=False)
                source.token, source.state.expiry = old.token, old.state.expiry
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
            self._sources.pop(name, None)
            self._metrics.token_expiry.remove(name)
            self._publish()

    def _publish(self) -> None:
        self._on_tokens({name: s.token for name, s in self._sources.items() if s.token})

    async def _run(self, name: str, source: _Source) -> None:
        backoff = BACKOFF_INITIAL
        slow_warning = asyncio.get_running_loop().call_later(
            SLOW_FIRST_TOKEN, lambda: log.warning(
                "still waiting for the first access token of auth profile %r (%s); Envoys get no config "
                "until it arrives", name, source.state.source) if not source.token else None)
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
            source.credentials = await asyncio.to_thread(self._factory, source.profile)
        credentials = source.credentials
        await asyncio.to_thread(credentials.refresh, self._request)  # blocking HTTP: off the loop
        token = credentials.token
        if not token:
            raise RuntimeError("the token endpoint returned an empty access token")
        expiry = credentials.expiry.replace(tzinfo=dt.timezone.utc).timestamp() if credentials.expiry else None
        state = source.state
        recovered = state.failures_in_a_row > 0
        state.expiry, state.last_refresh = expiry, time.time()
        state.refreshes_ok += 1
        state.failures_in_a_row, state.degraded = 0, False
        self._metrics.token_refreshes.labels(name, "ok").inc()
        if recovered:
            log.info("access token of auth profile %r refreshed again after failures", name)
        if token != source.token:
            source.token = token
            self._publish()
        log.debug("access token of auth profile %r refreshed; expires %s", name, _iso(expiry))

    def _record_failure(self, name: str, source: _Source, exc: Exception) -> None:
        state = source.state
        state.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        state.last_error_at = time.time()
        state.refreshes_failed += 1
        state.failures_in_a_row += 1
        self._metrics.token_refreshes.labels(name, "failed").inc()
        expired = not state.expiry or state.expiry <= time.time()
        if state.failures_in_a_row == 1 and not expired:
            log.warning("refreshing the access token of auth profile %r failed (the current one is valid "
                        "until %s; retrying): %s", name, _iso(state.expiry), state.last_error)
        if expired and source.token and not state.degraded:
            state.degraded = True  # one error line per state change, not per retry
            log.error("access token of auth profile %r EXPIRED and could not be refreshed; Vertex will "
                      "refuse requests: %s", name, state.last_error)
        elif not source.token and state.failures_in_a_row == 1:
            log.error("cannot get the first access token of auth profile %r: %s", name, state.last_error)


def _refresh_delay(expiry: float | None, margin: float) -> float:
    """Seconds until the next refresh: `margin` before expiry; for tokens that live shorter
    than the margin (tests, odd issuers), at 80% of their life."""
    if expiry is None:
        return 300.0
    left = expiry - time.time()
    return max(1.0, left - margin if left > margin else left * 0.8)


def _first_line(exc: Exception) -> str:
    text = str(exc) or repr(exc)
    return text.splitlines()[0][:300]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")
