"""Bounded load while the local region starts failing mid-run: clients see no error."""

from __future__ import annotations

import asyncio
import json

import pytest

from control_plane.lab.loadgen import run_load, summary
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

TOTAL, CONCURRENCY, FAIL_AT = 2000, 32, 500
BODY = json.dumps({"instances": [{"feature": i} for i in range(20)]}).encode()


@pytest.fixture
def stack():  # one per mode: an ejection from the previous run would skip the local region
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra={"policy": {
        "per_try_timeout": "1s", "timeout": "10s",
        "outlier_detection": {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "30s"}}})
    yield stack
    stack.close()


@pytest.mark.parametrize("mode", ["503", "down", "hang"])
def test_no_client_error_when_the_local_region_fails_mid_run(stack, mode):
    local = stack.emulators["us-central1"]
    try:
        result = asyncio.run(run_load(stack.url("/v1/models/housing:predict"), TOTAL, CONCURRENCY, BODY,
                                      events={FAIL_AT: lambda: local.fail(mode)}, deadline_s=120))
    finally:
        local.fail("none")
    assert len(result.samples) == TOTAL, "the run was cut short by its deadline"
    assert result.errors == [], summary(result.errors)
    regions = [s.region for s in sorted(result.samples, key=lambda s: s.started)]
    assert regions[0] == "us-central1" and regions[-1] == "us-east4"
    # after ejection the local region is skipped: only a few requests paid a second attempt
    assert sum(s.attempts > 1 for s in result.samples) <= CONCURRENCY + 3
