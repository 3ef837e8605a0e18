"""The fleet's view of each region, from every Envoy's load reports (control_plane/lrs.py),
and fleet-wide avoidance: when most Envoys sending a region traffic fail there, that region
goes to the back of every Envoy's failover order (an ordinary xDS push), so Envoys that have
not yet hit it skip it on the first attempt.

Bounds, so that reports can never drain the gateway:
- at least `min_reporting_envoys` Envoys must be reporting (one Envoy's own outlier
  detection already protects it; a lone reporter is not "the fleet");
- a region is avoided only while at least one other region stays un-avoided;
- an avoided region stays so for `hold` (doubled per relapse, up to 8x), then is restored
  once no Envoy fails against it (with no traffic to it that means: on probation, so it
  takes first attempts again and is re-avoided if it still fails);
- an operator can restore it at once (POST /debug/regions/{region}/restore), or turn
  avoidance off (`observability.load_reports.avoid: false`, which restores everything).

Pure apart from the clock it is given: decisions are a function of the reports and time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import LoadReports
from .metrics import Metrics
from .status import printable

log = logging.getLogger(__name__)

RELAPSE_WINDOW_HOLDS = 10  # avoided again within this many holds of a restore: a relapse
MAX_HOLD_FACTOR = 8
# Between reports that change no Envoy's failing set, decisions are re-evaluated at most this
# often (what ages out of the window, holds running out): a fleet sends many reports a second.
EVALUATE_EVERY = 0.1


@dataclass
class Tally:
    success: int = 0
    error: int = 0

    @property
    def total(self) -> int:
        return self.success + self.error


@dataclass
class EnvoyLoad:
    """One Envoy's reports within the window: (time, {(model, region): Tally}) per report, and
    their sums per region, kept as reports come and go (a decision reads sums, not reports)."""

    node_id: str
    local_region: str
    reports: deque = field(default_factory=deque)
    per_region: dict[str, Tally] = field(default_factory=dict)
    last_report: float = 0.0
    # region -> (time of the latest report with attempts there, whether some of them failed)
    last_traffic: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def add(self, at: float, counts: dict[tuple[str, str], Tally]) -> None:
        self.reports.append((at, counts))
        self._apply(counts, 1)
        self.last_report = at
        for (_, region), tally in counts.items():
            if tally.total:
                previous = self.last_traffic.get(region)
                failed = bool(tally.error) or (previous is not None and previous[0] == at and previous[1])
                self.last_traffic[region] = (at, failed)

    def expire(self, since: float) -> None:
        while self.reports and self.reports[0][0] < since:
            self._apply(self.reports.popleft()[1], -1)

    def forget_region(self, region: str) -> None:
        for _, counts in self.reports:
            for key in [k for k in counts if k[1] == region]:
                del counts[key]
        self.per_region.pop(region, None)
        self.last_traffic.pop(region, None)

    def _apply(self, counts: dict[tuple[str, str], Tally], sign: int) -> None:
        for (_, region), tally in counts.items():
            into = self.per_region.get(region)
            if into is None:
                into = self.per_region[region] = Tally()
            into.success += sign * tally.success
            into.error += sign * tally.error


@dataclass
class Avoidance:
    region: str
    since: float
    until: float
    strikes: int
    reason: str
    wall_since: float = field(default_factory=time.time)


class FleetLoad:
    def __init__(self, settings: Callable[[], LoadReports], metrics: Metrics,
                 on_change: Callable[[frozenset[str]], None], regions: Callable[[], list[str]],
                 clock: Callable[[], float] = time.monotonic):
        self._settings = settings
        self._metrics = metrics
        self._on_change = on_change
        self._regions = regions
        self._clock = clock
        self.envoys: dict[str, EnvoyLoad] = {}
        self.avoided: dict[str, Avoidance] = {}
        self._restored_at: dict[str, tuple[float, int]] = {}  # region -> (when, strikes then)
        self.reports = 0
        self._evaluated_at = float("-inf")
        self._evaluated_with: LoadReports | None = None
        self._counters: dict[tuple, object] = {}  # metric children by labels: labels() is slow

    # ------------------------------------------------------------------ input

    def record(self, node_id: str, local_region: str, counts: dict[tuple[str, str], Tally]) -> None:
        """One load report: per (model, region) the attempts that succeeded and failed since
        that Envoy's previous report."""
        now = self._clock()
        envoy = self.envoys.get(node_id)
        joined = envoy is None or envoy.local_region != local_region
        if joined:
            envoy = self.envoys[node_id] = EnvoyLoad(node_id, local_region)
        settings = self._settings()
        before = self._failing_regions(envoy, settings)
        envoy.add(now, counts)
        self.reports += 1
        self._metrics.load_reports.inc()
        for (model, region), tally in counts.items():
            if tally.success:
                self._counter("region_requests", model, region, "success").inc(tally.success)
                if region != local_region:
                    self._counter("failover_answers", model, region).inc(tally.success)
            if tally.error:
                self._counter("region_requests", model, region, "error").inc(tally.error)
        if joined or settings is not self._evaluated_with or self._failing_regions(envoy, settings) != before \
                or now - self._evaluated_at >= EVALUATE_EVERY:
            self.evaluate()

    def _counter(self, name: str, *labels: str):
        child = self._counters.get((name, *labels))
        if child is None:
            child = self._counters[(name, *labels)] = getattr(self._metrics, name).labels(*labels)
        return child

    def _failing_regions(self, envoy: EnvoyLoad, settings: LoadReports) -> set[str]:
        now = self._clock()
        return {region for region, tally in envoy.per_region.items() if _fails(envoy, region, tally, settings, now)}

    def forget(self, node_id: str) -> None:
        """That Envoy's report stream ended."""
        self.envoys.pop(node_id, None)
        self.evaluate()

    # ------------------------------------------------------------------ decisions

    def evaluate(self) -> None:
        settings = self._evaluated_with = self._settings()
        now = self._evaluated_at = self._clock()
        since = now - settings.window
        for envoy in list(self.envoys.values()):
            envoy.expire(since)
            if envoy.last_report < since:
                del self.envoys[envoy.node_id]  # silent longer than the window: not reporting
        failing, sending = self._failing(settings)
        reporting = len(self.envoys)
        self._metrics.reporting_envoys.set(reporting)
        known = self._regions()
        for region in known:
            self._metrics.failing_envoys.labels(region).set(len(failing.get(region, ())))
            self._metrics.avoided.labels(region).set(1 if region in self.avoided else 0)
        before = frozenset(self.avoided)

        if not settings.avoid:
            for region in list(self.avoided):
                self._restore(region, now, "avoidance turned off (observability.load_reports.avoid)")
        for region in list(self.avoided):
            if region not in known:
                self._restore(region, now, "no longer in the config")
            elif now >= self.avoided[region].until and not self._should_avoid(region, failing, sending):
                self._restore(region, now, "hold over and no Envoy fails against it")
        if settings.avoid and reporting >= settings.min_reporting_envoys:
            for region in sorted(failing):
                if region in self.avoided or region not in known or not self._should_avoid(region, failing, sending):
                    continue
                if not [r for r in known if r != region and r not in self.avoided]:
                    continue  # never avoid the last region standing
                self._avoid(region, now, settings, failing[region], sending[region], reporting)

        after = frozenset(self.avoided)
        if after != before:
            self._on_change(after)

    @staticmethod
    def _should_avoid(region: str, failing: dict[str, list[str]], sending: dict[str, list[str]]) -> bool:
        # "Most": more than half of the Envoys that sent the region traffic in the window.
        return 2 * len(failing.get(region, ())) > len(sending.get(region, ())) > 0

    def _failing(self, settings: LoadReports) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Per region: the Envoys failing against it, and those that sent it traffic (window)."""
        failing: dict[str, list[str]] = {}
        sending: dict[str, list[str]] = {}
        now = self._clock()
        for envoy in self.envoys.values():
            for region, tally in envoy.per_region.items():
                if not tally.total:
                    continue
                sending.setdefault(region, []).append(envoy.node_id)
                if _fails(envoy, region, tally, settings, now):
                    failing.setdefault(region, []).append(envoy.node_id)
        return failing, sending

    def _avoid(self, region: str, now: float, settings: LoadReports, failing: list[str], sending: list[str],
               reporting: int) -> None:
        restored = self._restored_at.get(region)
        relapse = restored is not None and now - restored[0] < RELAPSE_WINDOW_HOLDS * settings.hold
        strikes = restored[1] + 1 if relapse else 1
        hold = settings.hold * min(2 ** (strikes - 1), MAX_HOLD_FACTOR)
        reason = (f"{len(failing)} of {len(sending)} Envoys sending it traffic fail there "
                  f"({', '.join(printable(n, 256) for n in sorted(failing))}); {reporting} reporting")
        self.avoided[region] = Avoidance(region, now, now + hold, strikes, reason)
        self._metrics.avoided.labels(region).set(1)
        self._metrics.avoidance_changes.labels(region, "avoid").inc()
        log.warning("fleet avoidance: region %s moves to the back of every failover order for at least %.0fs: %s",
                    region, hold, reason)

    def _restore(self, region: str, now: float, reason: str) -> None:
        avoidance = self.avoided.pop(region)
        self._restored_at[region] = (now, avoidance.strikes)
        self._metrics.avoided.labels(region).set(0)
        self._metrics.avoidance_changes.labels(region, "restore").inc()
        log.warning("fleet avoidance: region %s restored to its place in the failover orders: %s", region, reason)

    def restore(self, region: str) -> bool:
        """An operator's restore: at once, and the region's past reports are forgotten (else
        the same reports would avoid it again). False if it was not avoided."""
        if region not in self.avoided:
            return False
        for envoy in self.envoys.values():
            envoy.forget_region(region)
        self._restore(region, self._clock(), "restored by an operator")
        self._restored_at.pop(region, None)  # an operator's restore is no relapse count
        self._on_change(frozenset(self.avoided))
        return True

    # ------------------------------------------------------------------ views

    def view(self) -> dict:
        """For /debug/regions: per region, what the fleet reported over the window."""
        settings = self._settings()
        now = self._clock()
        since = now - settings.window
        for envoy in self.envoys.values():
            envoy.expire(since)
        failing, sending = self._failing(settings)
        regions: dict[str, dict] = {}
        for region in self._regions():
            tally, models = Tally(), {}
            for envoy in self.envoys.values():
                for at, counts in envoy.reports:
                    if at < since:
                        continue
                    for (model, r), t in counts.items():
                        if r == region:
                            tally.success += t.success
                            tally.error += t.error
                            m = models.setdefault(model, Tally())
                            m.success += t.success
                            m.error += t.error
            avoidance = self.avoided.get(region)
            regions[region] = {
                "requests_per_second": round(tally.total / settings.window, 3),
                "success_rate": round(tally.success / tally.total, 4) if tally.total else None,
                "envoys_sending": sorted(sending.get(region, [])),
                "envoys_failing": sorted(failing.get(region, [])),
                "avoided": None if avoidance is None else {
                    "since": _iso(avoidance.wall_since), "for_at_least_seconds": round(avoidance.until - now, 1),
                    "strikes": avoidance.strikes, "reason": avoidance.reason},
                "models": {name: {"requests_per_second": round(t.total / settings.window, 3),
                                  "success_rate": round(t.success / t.total, 4) if t.total else None}
                           for name, t in sorted(models.items())},
            }
        return {"window_seconds": settings.window, "reporting_envoys": sorted(self.envoys),
                "avoidance": "on" if settings.avoid else "off", "regions": regions}


def _fails(envoy: EnvoyLoad, region: str, tally: Tally, settings: LoadReports, now: float) -> bool:
    """An Envoy fails against a region when, within the window, at least min_errors of its
    attempts there failed and either error_ratio of them did, or its last attempts there
    failed and it has sent none since for two report intervals: it ejected the region, so
    the successes from before the failure would otherwise dilute the ratio for a whole window."""
    if tally.error < settings.min_errors:
        return False
    if tally.error >= settings.error_ratio * tally.total:
        return True
    at, failed = envoy.last_traffic.get(region, (now, False))
    return failed and now - at >= 2 * settings.interval


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
