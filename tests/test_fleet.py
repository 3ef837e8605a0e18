"""Fleet-wide avoidance decisions from load reports: pure, on a test clock."""

from __future__ import annotations

from envoy.config.endpoint.v3 import load_report_pb2
from envoy.service.load_stats.v3 import lrs_pb2

from control_plane.config import LoadReports
from control_plane.fleet import FleetLoad, Tally
from control_plane.lrs import counts_of
from control_plane.metrics import Metrics
from control_plane.status import Sparse, printable

REGIONS = ["us-central1", "us-east4", "europe-west4"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make(**settings):
    clock, changes = Clock(), []
    values = {"min_reporting_envoys": 2, "min_errors": 3, "window": 10, "hold": 30, **settings}
    fleet = FleetLoad(lambda: LoadReports(**values), Metrics(), changes.append, lambda: REGIONS, clock)
    return fleet, clock, changes


def fail(fleet, node, region="us-central1", errors=5, success=0, model="housing", local="us-central1"):
    fleet.record(node, local, {(model, region): Tally(success=success, error=errors)})


def test_counts_come_from_per_region_clusters_only():
    report = lrs_pb2.LoadStatsRequest(cluster_stats=[
        load_report_pb2.ClusterStats(cluster_name="model/housing@us-east4", upstream_locality_stats=[
            load_report_pb2.UpstreamLocalityStats(total_successful_requests=4, total_error_requests=1)]),
        load_report_pb2.ClusterStats(cluster_name="model/housing", upstream_locality_stats=[
            load_report_pb2.UpstreamLocalityStats(total_successful_requests=9)]),
        load_report_pb2.ClusterStats(cluster_name="xds_cluster")])
    assert counts_of(report) == {("housing", "us-east4"): Tally(4, 1)}


def test_one_reporting_envoy_is_not_the_fleet():
    fleet, _, changes = make()
    fail(fleet, "a")
    assert not fleet.avoided and not changes
    fleet.record("b", "us-east4", {})  # a second Envoy reports (no traffic to the region)
    assert set(fleet.avoided) == {"us-central1"} and changes == [frozenset({"us-central1"})]


def test_most_envoys_sending_it_traffic_must_fail_there():
    fleet, _, _ = make()
    fail(fleet, "a")
    fail(fleet, "b", errors=0, success=20)  # b is doing fine there
    assert not fleet.avoided
    fail(fleet, "c")  # 2 of 3 fail
    assert set(fleet.avoided) == {"us-central1"}
    assert fleet.view()["regions"]["us-central1"]["envoys_failing"] == ["a", "c"]


def test_a_few_errors_or_a_low_error_ratio_are_not_failing():
    fleet, _, _ = make()
    fail(fleet, "a", errors=2)  # below min_errors
    fail(fleet, "b", errors=3, success=10)  # below error_ratio 0.5
    assert not fleet.avoided


def test_never_the_last_region_standing():
    fleet, _, _ = make()
    for region in REGIONS:
        fail(fleet, "a", region)
        fail(fleet, "b", region)
    assert len(fleet.avoided) == len(REGIONS) - 1


def test_hold_then_restore_and_a_relapse_holds_twice_as_long():
    fleet, clock, changes = make(window=60)

    def tick(seconds):
        clock.now += seconds
        fleet.record("a", "us-central1", {})
        fleet.record("b", "us-central1", {})

    fail(fleet, "a")
    fail(fleet, "b")
    assert fleet.avoided["us-central1"].until == clock.now + 30
    tick(29)
    assert "us-central1" in fleet.avoided  # hold not over
    tick(2)
    assert "us-central1" in fleet.avoided  # hold over, but the failures are still within the window
    tick(30)
    assert not fleet.avoided and changes[-1] == frozenset()  # the window forgot them: on probation
    fail(fleet, "a")
    fail(fleet, "b")  # fails again soon after: a relapse
    assert fleet.avoided["us-central1"].strikes == 2
    assert fleet.avoided["us-central1"].until == clock.now + 60


def test_operator_restore_forgets_the_reports_and_turning_avoidance_off_restores_all():
    fleet, _, changes = make()
    fail(fleet, "a")
    fail(fleet, "b")
    assert fleet.restore("us-central1") and not fleet.avoided and changes[-1] == frozenset()
    fleet.record("a", "us-central1", {})
    assert not fleet.avoided  # the old failures do not avoid it again
    assert not fleet.restore("us-central1")
    values = {"avoid": True}
    fleet._settings = lambda: LoadReports(min_reporting_envoys=2, **values)
    fail(fleet, "a")
    fail(fleet, "b")
    assert fleet.avoided
    values["avoid"] = False
    fleet.record("a", "us-central1", {})
    assert not fleet.avoided


def test_silent_envoys_stop_counting():
    fleet, clock, _ = make()
    fail(fleet, "a")
    clock.now += 11
    fleet.record("b", "us-central1", {})
    assert list(fleet.envoys) == ["b"] and not fleet.avoided


def test_an_envoy_that_stopped_sending_after_failures_is_failing_though_its_ratio_is_diluted():
    fleet, clock, _ = make(interval=1)
    fleet.record("b", "us-east4", {})
    fail(fleet, "a", errors=0, success=20)  # healthy traffic earlier in the window
    clock.now += 1
    fail(fleet, "a", errors=3, success=2)  # then failures, and it ejects the region: no attempts since
    assert not fleet.avoided  # 3 of 25: the ratio alone says healthy
    for _ in range(2):
        clock.now += 1
        fleet.record("a", "us-central1", {})
        fleet.record("b", "us-east4", {})
    assert set(fleet.avoided) == {"us-central1"}


def test_sporadic_errors_in_steady_traffic_are_not_failing():
    fleet, clock, _ = make(interval=1)
    fleet.record("b", "us-east4", {})
    for _ in range(8):
        clock.now += 1
        fail(fleet, "a", errors=1, success=50)
    assert not fleet.avoided


def test_a_node_id_in_the_avoidance_log_line_is_escaped(caplog):
    fleet, _, _ = make()
    fail(fleet, "a\nFORGED-LINE CRITICAL")
    with caplog.at_level("WARNING", logger="control_plane.fleet"):
        fail(fleet, "b")
    line = next(r.getMessage() for r in caplog.records if "moves to the back" in r.getMessage())
    assert "\n" not in line and "a\\nFORGED-LINE" in line


def test_printable_keeps_its_limit_for_the_escaped_text():
    assert printable("ab\ncd") == "ab\\ncd"
    shown = printable("E" * 10 + "\x1b" * 5000, limit=100)
    assert len(shown) <= 100 + len("... [5000 more characters]") and shown.endswith("more characters]")
    assert shown.startswith("E" * 10 + "\\x1b") and "\x1b" not in shown
    assert printable("\U000e0001" * 6000).endswith("more characters]") and len(printable("\U000e0001" * 6000)) < 4200


def test_a_repeated_refusal_is_logged_once_per_interval_per_node_with_what_was_left_out():
    clock = Clock()
    sparse = Sparse(10.0, clock, max_keys=2)
    assert sparse.due("envoy-a") == 0  # the first: logged
    assert sparse.due("envoy-a") is None and sparse.due("envoy-a") is None  # retries within 10 s: left out
    assert sparse.due("envoy-b") == 0  # another node: its own line
    clock.now += 10
    assert sparse.due("envoy-a") == 2  # logged again, saying 2 were left out
    sparse.due("envoy-c")  # a third key: the memory stays bounded (forgets the others)
    assert sparse.due("envoy-a") == 0
