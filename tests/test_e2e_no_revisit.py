"""A retry never returns to a region already tried while an untried one remains: for every
strategy and at lopsided weights, recorded per attempt by the emulators (each attempt of a
request carries the same x-request-id, so the regions one request visited can be read back)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from control_plane.lab.loadgen import run_load
from control_plane.lab.stack import DELETE, Stack

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4", "europe-west4")
NO_EJECTION = {"per_try_timeout": "2s", "num_retries": 2, "outlier_detection": {"consecutive_5xx": 1000}}


def visits(stack: Stack) -> dict[str, list[str]]:
    """x-request-id -> the regions its attempts reached, in arrival order."""
    seen: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for emulator in stack.emulators.values():
        for r in emulator.received:
            seen[r.headers["x-request-id"]].append((r.time, r.region))
    return {rid: [region for _, region in sorted(v)] for rid, v in seen.items()}


def drive(stack: Stack, total: int = 200, concurrency: int = 8):
    result = asyncio.run(run_load(stack.url("/v1/models/housing:predict"), total, concurrency,
                                  b'{"instances": [1]}', deadline_s=60))
    assert len(result.samples) == total
    return result


def assert_no_revisits(stack: Stack, result, healthy: set[str]) -> None:
    per_request = visits(stack)
    assert len(per_request) == len(result.samples)
    revisits = {rid: v for rid, v in per_request.items() if len(v) != len(set(v))}
    assert not revisits, f"{len(revisits)} requests revisited a region, e.g. {list(revisits.values())[:5]}"
    # Three regions, two retries, one healthy region: every request reaches it.
    assert all(v[-1] in healthy for v in per_request.values())
    assert not result.errors, result.errors[:3]


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=REGIONS, extra={"policy": NO_EJECTION})
    yield stack
    stack.close()


CASES = [
    # strategy, weights, failing regions
    ("weighted", {"us-central1": 99, "us-east4": 1, "europe-west4": 1}, ("us-central1", "us-east4")),
    ("weighted", {"us-central1": 1, "us-east4": 99, "europe-west4": 1}, ("us-east4", "us-central1")),
    ("weighted", {"us-central1": 1, "us-east4": 1, "europe-west4": 99}, ("europe-west4", "us-east4")),
    ("weighted", {"us-central1": 80, "us-east4": 20, "europe-west4": 0}, ("us-central1",)),
    ("least_request", None, ("us-central1", "us-east4")),
    ("least_request", None, ("europe-west4", "us-central1")),
    ("failover", None, ("us-central1", "us-east4")),
]


@pytest.mark.parametrize("strategy,weights,failing", CASES,
                         ids=[f"{s}-{'-'.join(map(str, (w or {}).values())) or 'none'}-{len(f)}fail" for s, w, f in CASES])
def test_a_retry_never_revisits_a_region_while_an_untried_one_remains(stack, strategy, weights, failing):
    stack.reset()
    stack.update_config({"models": {"housing": {"strategy": strategy, "weights": weights or DELETE}}})
    stack.wait_synced()
    for region in failing:
        stack.emulators[region].fail("503")
    result = drive(stack)
    healthy = {r for r in REGIONS if r not in failing and (not weights or weights[r] > 0)}
    assert_no_revisits(stack, result, healthy)


def test_a_drained_region_still_serves_pinned_requests(stack):
    stack.reset()
    stack.update_config({"models": {"housing": {"strategy": "weighted", "weights": {
        "us-central1": 1, "us-east4": 1, "europe-west4": 0}}}})
    stack.wait_synced()
    pinned = stack.post("/v1/models/housing:predict", json={"instances": [1]},
                        headers={"x-vertex-pin-region": "europe-west4"})
    assert pinned.status_code == 200 and pinned.headers["x-vertex-region"] == "europe-west4"
    result = drive(stack, total=100)
    assert not result.errors and {s.region for s in result.samples} == {"us-central1", "us-east4"}
    assert len(stack.emulators["europe-west4"].received) == 1  # only the pinned request


def test_a_single_region_retries_in_that_region_after_a_backoff(stack):
    stack.reset()
    stack.update_config({"models": {"housing": {"strategy": "failover", "weights": DELETE}},
                         "regions": {"us-central1": {"failover": []}}})
    stack.wait_synced()
    try:
        gaps = []
        for _ in range(20):
            stack.emulators["us-central1"].fail("503", count=1)
            response = stack.post("/v1/models/housing:predict", json={"instances": [1]})
            assert response.status_code == 200 and response.headers["x-envoy-attempt-count"] == "2"
            first, second = stack.emulators["us-central1"].received[-2:]
            assert first.headers["x-request-id"] == second.headers["x-request-id"]
            gaps.append(second.time - first.time)
        assert all(e.received == [] for r, e in stack.emulators.items() if r != "us-central1")
        # Envoy's jittered backoff: the first retry waits uniformly up to 250 ms (mean 125 ms).
        assert sum(gaps) / len(gaps) > 0.05, gaps
    finally:
        stack.update_config({"regions": {"us-central1": {"failover": ["us-east4", "europe-west4"]}}})
        stack.wait_synced()


@pytest.mark.parametrize("strategy,weights", [
    ("weighted", {"us-central1": 997, "us-east4": 1, "europe-west4": 1, "global": 1}),
    ("least_request", None),
    ("failover", None),
])
def test_four_regions_three_failing_every_request_reaches_the_fourth_without_a_revisit(strategy, weights):
    regions = (*REGIONS, "global")
    model = {"strategy": strategy, **({"weights": weights} if weights else {})}
    with Stack(regions=regions, extra={"policy": {**NO_EJECTION, "num_retries": 3},
                                       "models": {"housing": model}}) as four:
        for region in ("us-central1", "us-east4", "europe-west4"):
            four.emulators[region].fail("503")
        result = drive(four)
        assert_no_revisits(four, result, {"global"})
        assert {s.attempts for s in result.samples} <= {1, 2, 3, 4}
