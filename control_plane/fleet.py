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

log = logging.getLogger(__name__)

RELAPSE_WINDOW_HOLDS = 10  # avoided again within this many holds of a restore: a relapse
MAX_HOLD_FACTOR = 8


@dataclass
class Tally:
    success: int = 0
    error: int = 0

    @property
    def total(self) -> int:
        return self.success + self.error


@dataclass
class EnvoyLoad:
    """One Envoy's recent reports: (time, {(model, region): Tally}) per report."""

    node_id: str
    local_region: str
    reports: deque = field(default_factory=deque)
    last_report: float = 0.0

    def per_region(self, since: float) -> dict[str, Tally]:
        out: dict[str, Tally] = {}
        for at, counts in self.reports:
            if at < since:
                continue
            for (_, region), tally in counts.items():
                into = out.setdefault(region, Tally())
                into.success += tally.success
                into.error += tally.error
        return out


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

    # ------------------------------------------------------------------ input

    def record(self, node_id: str, local_region: str, counts: dict[tuple[str, str], Tally]) -> None:
        """One load report: per (model, region) the attempts that succeeded and failed since
        that Envoy's previous report."""
        now = self._clock()
        envoy = self.envoys.get(node_id)
        if envoy is None or envoy.local_region != local_region:
            envoy = self.envoys[node_id] = EnvoyLoad(node_id, local_region)
        envoy.reports.append((now, counts))
        envoy.last_report = now
        self.reports += 1
        metrics = self._metrics
        metrics.load_reports.inc()
        for (model, region), tally in counts.items():
            if tally.success:
                metrics.region_requests.labels(model, region, "success").inc(tally.success)
                if region != local_region:
                    metrics.failover_answers.labels(model, region).inc(tally.success)
            if tally.error:
                metrics.region_requests.labels(model, region, "error").inc(tally.error)
        self.evaluate()

    def forget(self, node_id: str) -> None:
        """That Envoy's report stream ended."""
        self.envoys.pop(node_id, None)
        self.evaluate()

    # ------------------------------------------------------------------ decisions

    def evaluate(self) -> None:
        settings = self._settings()
        now = self._clock()
        since = now - settings.window
        for envoy in list(self.envoys.values()):
            while envoy.reports and envoy.reports[0][0] < since:
                envoy.reports.popleft()
            if envoy.last_report < since:
                del self.envoys[envoy.node_id]  # silent longer than the window: not reporting
        failing, sending = self._failing(settings, since)
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

    def _failing(self, settings: LoadReports, since: float) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        failing: dict[str, list[str]] = {}
        sending: dict[str, list[str]] = {}
        for envoy in self.envoys.values():
            for region, tally in envoy.per_region(since).items():
                if not tally.total:
                    continue
                sending.setdefault(region, []).append(envoy.node_id)
                if tally.error >= settings.min_errors and tally.error >= settings.error_ratio * tally.total:
                    failing.setdefault(region, []).append(envoy.node_id)
        return failing, sending

    def _avoid(self, region: str, now: float, settings: LoadReports, failing: list[str], sending: list[str],
               reporting: int) -> None:
        restored = self._restored_at.get(region)
        relapse = restored is not None and now - restored[0] < RELAPSE_WINDOW_HOLDS * settings.hold
        strikes = restored[1] + 1 if relapse else 1
        hold = settings.hold * min(2 ** (strikes - 1), MAX_HOLD_FACTOR)
        reason = (f"{len(failing)} of {len(sending)} Envoys sending it traffic fail there "
                  f"({', '.join(sorted(failing))}); {reporting} reporting")
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
            for _, counts in envoy.reports:
                for key in [k for k in counts if k[1] == region]:
                    del counts[key]
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
        failing, sending = self._failing(settings, since)
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


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
