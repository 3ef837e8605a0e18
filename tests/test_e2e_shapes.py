"""Models written from their shape (control_plane/resources/shapes.py) through a real Envoy:
each member's first attempt and its failover carry that member's own path and endpoint id."""

from __future__ import annotations

import pytest

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import PROJECT, Stack
from control_plane.resources import shapes

pytestmark = pytest.mark.e2e

REGIONS = ("us-central1", "us-east4")
# Five models alike but for their names and ids: one shape (MIN_MEMBERS is 4).
MEMBERS = {f"fleet-{i}.v2": {"us-central1": f"71{i}", "us-east4": f"72{i}"} for i in range(5)}


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=REGIONS, extra={"models": {m: {"endpoints": ids} for m, ids in MEMBERS.items()}})
    for model, ids in MEMBERS.items():
        for region, endpoint_id in ids.items():
            stack.emulators[region].endpoints[endpoint_id] = model
    yield stack
    stack.close()


def test_shaped_models_are_served_with_their_own_path_first_and_on_failover(stack):
    assert set(MEMBERS) <= shapes.shaped_models(stack.plane.plane.cache.build)
    for model, ids in MEMBERS.items():
        stack.reset()
        response = stack.post(f"/v1/models/{model}:predict", json={"instances": [1]})
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-central1", response.text
        seen = stack.emulators["us-central1"].received
        assert [r.path for r in seen] == [f"/v1/projects/{PROJECT}/locations/us-central1/endpoints/{ids['us-central1']}:predict"]
    stack.reset()
    stack.emulators["us-central1"].fail("503")
    model, ids = "fleet-3.v2", MEMBERS["fleet-3.v2"]
    response = stack.post(f"/v1/models/{model}:predict", json={"instances": [1]})
    assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4", response.text
    wait_for(lambda: len(stack.emulators["us-east4"].received) == 1, what="the failover attempt")
    failover = stack.emulators["us-east4"].received[0]
    assert failover.path == f"/v1/projects/{PROJECT}/locations/us-east4/endpoints/{ids['us-east4']}:predict"
    assert failover.host == "us-east4-aiplatform.googleapis.com"
