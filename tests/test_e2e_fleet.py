"""Load reports and fleet-wide avoidance with real Envoys: a region fails behind one Envoy; the
control plane, from that Envoy's load reports, moves the region to the back of every Envoy's
order, so another Envoy never sends it a first attempt; an operator or recovery restores it."""

from __future__ import annotations

import time

import pytest
import requests

from control_plane.lab.envoy_process import EnvoyProcess
from control_plane.lab.harness import free_port, wait_for
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

REPORTS = {"interval": "0.2s", "window": "3s", "min_errors": 3, "min_reporting_envoys": 2, "hold": "60s"}


@pytest.fixture()
def fleet():
    """Two Envoys in us-central1 (A: the stack's, B: a second one), regions us-central1, us-east4."""
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",),
                  extra={"observability": {"load_reports": REPORTS}})
    second = None
    try:
        second = EnvoyProcess("us-central1", stack.plane.xds_address, f"127.0.0.1:{free_port()}",
                              node_id="envoy-b", workdir=stack.dir).start().wait_ready()
        yield stack, second
    finally:
        if second is not None:
            second.stop()
        stack.close()


def load(stack) -> dict:
    return requests.get(stack.plane.admin_url + "/debug/regions", timeout=5).json()["load"]


def post(url: str) -> requests.Response:
    return requests.post(url + "/v1/models/housing:predict", json={"instances": [1]}, timeout=30)


def reports_from_a(stack, a_url: str) -> None:
    """Requests through A until its load reports show them: a request in the period in which A
    first saw its cluster is never reported, so one request alone may never show."""
    def reported() -> bool:
        assert post(a_url).headers["x-vertex-region"] == "us-central1"
        return "envoy-us-central1" in load(stack)["regions"]["us-central1"]["envoys_sending"]
    wait_for(reported, timeout=10, interval=0.1, what="A's load report")


def test_a_region_failing_behind_one_envoy_is_skipped_by_the_other_without_a_failed_request(fleet):
    stack, b = fleet
    a_url, b_url = stack.url(""), f"http://{b.listen}"
    central = stack.emulators["us-central1"]
    # Reports flow: A's attempts are in the fleet view (an Envoy does not report the period in
    # which it first saw a cluster, so wait for this before measuring anything).
    reports_from_a(stack, a_url)
    assert b.first_region() == "us-central1"

    central.fail("503")
    started = time.monotonic()
    for _ in range(4):  # A's clients never see the failures: failover answers them
        response = post(a_url)
        assert response.status_code == 200 and response.headers["x-vertex-region"] == "us-east4"
    wait_for(lambda: b.first_region() == "us-east4", timeout=10, what="B's order to put us-central1 last")
    elapsed = time.monotonic() - started
    view = load(stack)["regions"]["us-central1"]
    assert view["avoided"] is not None and view["envoys_failing"] == ["envoy-us-central1"]
    assert "1 of 1 Envoys" in view["avoided"]["reason"]
    assert stack.envoys["us-central1"].first_region() == "us-east4"  # A too
    # /debug/config shows the order B runs, and the file's beside it
    shown = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-b"}, timeout=5).json()
    assert shown["avoided"] == ["us-central1"]
    assert shown["models"]["housing"]["regions"] == ["us-east4", "us-central1"]
    assert shown["models"]["housing"]["regions_in_file"] == ["us-central1", "us-east4"]

    before = len(central.received)
    for _ in range(10):
        response = post(b_url)
        assert response.status_code == 200
        assert response.headers["x-vertex-region"] == "us-east4"
        assert response.headers["x-envoy-attempt-count"] == "1"  # no failed first attempt on B
    assert len(central.received) == before
    metrics = requests.get(stack.plane.admin_url + "/metrics", timeout=5).text
    assert 'vertex_gateway_region_avoided{region="us-central1"} 1.0' in metrics
    assert 'vertex_gateway_region_avoidance_changes_total{action="avoid",region="us-central1"} 1.0' in metrics
    assert 'vertex_gateway_failover_answers_total{model="housing",region="us-east4"}' in metrics
    print(f"fleet-wide avoidance: {elapsed:.2f}s from the first failure to the other Envoy's new order")

    # The operator restores it (the region was fixed): at once, for every Envoy.
    central.fail("none")
    answer = requests.post(stack.plane.admin_url + "/debug/regions/us-central1/restore", timeout=5).json()
    assert answer == {"region": "us-central1", "restored": True, "avoided": []}
    wait_for(lambda: b.first_region() == "us-central1", timeout=10, what="B's order restored")
    shown = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-b"}, timeout=5).json()
    assert shown["avoided"] == [] and shown["models"]["housing"]["regions"] == ["us-central1", "us-east4"]
    assert "regions_in_file" not in shown["models"]["housing"]
    assert post(b_url).headers["x-vertex-region"] == "us-central1"


def test_avoidance_ends_by_itself_when_the_region_recovers_and_never_drains_the_last_region(fleet):
    stack, b = fleet
    stack.update_config({"observability": {"load_reports": {"hold": "1s", "window": "2s"}}})
    stack.wait_synced()
    central, east = stack.emulators["us-central1"], stack.emulators["us-east4"]
    reports_from_a(stack, stack.url(""))
    central.fail("503")
    east.fail("503")  # both regions fail: only one may be avoided
    for _ in range(6):
        post(stack.url(""))
    wait_for(lambda: any(r["avoided"] for r in load(stack)["regions"].values()), timeout=10, what="an avoidance")
    time.sleep(0.5)  # (a second avoidance would come with the same report: give it the chance)
    regions = load(stack)["regions"]
    assert sum(1 for r in regions.values() if r["avoided"]) == 1, regions
    central.fail("none")
    east.fail("none")
    # No Envoy fails against it any more: once the hold and the window are over it comes back.
    wait_for(lambda: not any(r["avoided"] for r in load(stack)["regions"].values()), timeout=15,
             what="the automatic restore")
    wait_for(lambda: b.first_region() == "us-central1", timeout=10, what="B's order restored")
    shown = requests.get(stack.plane.admin_url + "/debug/config", params={"node": "envoy-b"}, timeout=5).json()
    assert shown["avoided"] == [] and shown["models"]["housing"]["regions"] == ["us-central1", "us-east4"]
    assert "regions_in_file" not in shown["models"]["housing"]
    assert post(f"http://{b.listen}").headers["x-vertex-region"] == "us-central1"
