"""What an operator sees of traffic, through real Envoys: the JSON access log (fields, never a
token, off and sampled, to a file), and the per-model, per-region Prometheus series."""

from __future__ import annotations

import json
import re

import pytest

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import Stack

pytestmark = pytest.mark.e2e

CLIENT_SECRET = "client-secret-value-7f3a"
NO_EJECTION = {"policy": {"timeout": "10s", "per_try_timeout": "2s",
                          "outlier_detection": {"consecutive_5xx": 1000}}}


@pytest.fixture(scope="module")
def stack():
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra=NO_EJECTION)
    yield stack
    stack.close()


@pytest.fixture(autouse=True)
def clean(request):
    if "stack" in request.fixturenames:
        request.getfixturevalue("stack").reset()
    yield


def log_lines(envoy) -> list[dict]:
    """The access log lines in what Envoy wrote to stdout. Its own log (stderr) goes to the same
    file, unsynchronised, so a log line may sit in front of an access log line."""
    out = []
    for line in envoy.log_path.read_text(errors="replace").splitlines():
        start = line.find('{"attempts"')
        if start >= 0:
            try:
                out.append(json.loads(line[start:]))
            except ValueError:
                pass  # a line still being written
    return out


def entry_for(envoy, request_id: str) -> dict:
    # Envoy flushes access logs about once a second: wait for the line.
    return wait_for(lambda: next((e for e in log_lines(envoy) if e["request_id"] == request_id), None),
                    timeout=10, what=f"the access log line of {request_id}")


def test_a_failed_over_request_is_one_json_line_with_model_region_attempts_and_timings(stack):
    stack.emulators["us-central1"].fail("503")
    response = stack.post("/v1/models/housing:predict?key=query-secret", json={"instances": [1]},
                          headers={"x-request-id": "req-failover-1"})
    assert response.status_code == 200
    entry = entry_for(stack.envoys["us-central1"], "req-failover-1")
    assert entry["model"] == "housing"
    assert entry["region"] == "us-east4" and entry["attempts"] == 2
    assert entry["code"] == 200 and entry["flags"] == "-" and entry["details"] == "via_upstream"
    assert entry["path"].endswith("/locations/us-east4/endpoints/2002:predict")  # the verb, no query
    assert "query-secret" not in json.dumps(entry)
    assert entry["route"] == "model:housing"
    assert entry["bytes_in"] == len(b'{"instances": [1]}') and entry["bytes_out"] == len(response.content)
    assert 0 <= entry["ttfb_ms"] <= entry["duration_ms"]
    assert entry["client"] is None  # nobody authenticated (no client-auth filter configured)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", entry["time"])


def test_a_stream_logs_time_to_first_byte_apart_from_its_duration(stack):
    response = stack.post("/v1/models/churn:streamRawPredict", json={"instances": [1]},
                          headers={"x-request-id": "req-stream-1"})
    assert response.status_code == 200
    entry = entry_for(stack.envoys["us-central1"], "req-stream-1")
    assert entry["model"] == "churn" and entry["route"] == "model:churn:stream"
    assert entry["ttfb_ms"] < entry["duration_ms"]


def test_requests_envoy_answers_itself_are_logged_without_a_region(stack):
    stack.post("/no/such/path", json={}, headers={"x-request-id": "req-404"})
    entry = entry_for(stack.envoys["us-central1"], "req-404")
    assert entry["code"] == 404 and entry["region"] is None and entry["model"] is None
    assert entry["attempts"] == 0


def test_no_token_ever_appears_in_the_access_log(stack):
    for i in range(3):
        stack.post("/predict", json={"instances": [1]}, headers={
            "authorization": f"Bearer {CLIENT_SECRET}", "x-request-id": f"req-token-{i}"})
    entry_for(stack.envoys["us-central1"], "req-token-2")
    injected = stack.emulators["us-central1"].received[-1].headers["authorization"].removeprefix("Bearer ")
    text = stack.envoys["us-central1"].log_path.read_text()
    assert CLIENT_SECRET not in text
    assert injected and injected not in text
    assert stack.token_server.issued and all(token not in text for token in stack.token_server.issued)


def test_off_sampled_and_to_a_file(stack, tmp_path):
    envoy = stack.envoys["us-central1"]

    def burst(prefix: str, n: int) -> None:
        for i in range(n):
            assert stack.post("/predict", json={"instances": [1]},
                              headers={"x-request-id": f"{prefix}-{i}"}).status_code == 200

    try:
        stack.update_config({"observability": {"access_log": {"enabled": False}}})
        stack.wait_synced()
        burst("off", 20)
        stack.update_config({"observability": {"access_log": {"enabled": True, "sample_percent": 25}}})
        stack.wait_synced()
        burst("sampled", 200)
        burst("marker", 1)  # flushed after the sampled ones; sampled at 25% too, so send until one shows
        wait_for(lambda: any(e["request_id"].startswith(("sampled-", "marker-")) for e in log_lines(envoy)),
                 timeout=10, what="a sampled line")
        path = tmp_path / "access.log"
        stack.update_config({"observability": {"access_log": {"sample_percent": 100, "path": str(path)}}})
        stack.wait_synced()
        burst("file", 3)
        wait_for(lambda: path.exists() and path.read_text().count('"request_id":"file-') == 3, timeout=10,
                 what="three lines in the file")
    finally:
        stack.update_config({"observability": "__delete__"})
    ids = [e["request_id"] for e in log_lines(envoy)]
    assert not any(i.startswith("off-") for i in ids)
    sampled = sum(i.startswith("sampled-") for i in ids)
    assert 10 <= sampled <= 120, sampled  # 25% of 200, loosely: Envoy's own random numbers
    assert not any(i.startswith("file-") for i in ids)  # the file got them, not stdout


def prometheus(envoy) -> str:
    return envoy.admin("stats/prometheus")


def series(text: str, name: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            out.append(dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}") + 1])))
    return out


def test_envoy_series_carry_model_region_and_local_region_tags(stack):
    stack.emulators["us-central1"].fail("503")
    assert stack.post("/v1/models/housing:predict", json={"instances": [1]}).status_code == 200
    text = prometheus(stack.envoys["us-central1"])
    attempts = {(s["model"], s.get("region", "")) for s in series(text, "envoy_cluster_upstream_rq_total")
                if "model" in s}
    assert {("housing", "us-central1"), ("housing", "us-east4"), ("churn", "us-east4"), ("housing", "")} <= attempts
    assert all(s["local_region"] == "us-central1" for s in series(text, "envoy_cluster_upstream_rq_total"))
    ejections = series(text, "envoy_cluster_outlier_detection_ejections_active")
    assert {(s["model"], s["region"]) for s in ejections} >= {("housing", "us-central1"), ("housing", "us-east4")}
    retries = [s for s in series(text, "envoy_cluster_upstream_rq_retry") if s.get("model") == "housing"
               and "region" not in s]
    assert retries and retries[0]["envoy_cluster_name"] == "model/housing"  # the old label stays too


def test_an_authenticated_client_is_named_in_the_log_and_its_token_is_not(tmp_path):
    from control_plane.lab.jwt_issuer import Issuer

    issuer = Issuer("https://idp.log.test")
    jwks = issuer.write_jwks(tmp_path / "jwks.json")
    clients = {"jwt": {"corp": {"issuer": issuer.issuer, "audiences": ["gw"], "jwks_file": str(jwks)}},
               "allow": {"anyone": {"identities": ["*"]}}}
    with Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra={"clients": clients}) as stack:
        token = issuer.token("gw", sub="batch-job-7", email="batch@corp.test")
        assert stack.post("/predict", json={"instances": [1]}, headers={
            "authorization": f"Bearer {token}", "x-request-id": "req-jwt"}).status_code == 200
        assert stack.post("/predict", json={"instances": [1]}, headers={"x-request-id": "req-anon"}).status_code == 401
        envoy = stack.envoys["us-central1"]
        entry = entry_for(envoy, "req-jwt")
        assert (entry["client"], entry["client_email"], entry["client_cert"]) == ("batch-job-7", "batch@corp.test", None)
        anonymous = entry_for(envoy, "req-anon")
        assert anonymous["code"] == 401 and anonymous["client"] is None
        assert token not in envoy.log_path.read_text()


def test_with_lazy_cluster_stats_the_series_dashboards_and_alerts_use_appear_once_used():
    """`bootstrap --lazy-cluster-stats`: a cluster's traffic series exist once it has had traffic,
    with the same names and tags; a cluster never used has none (its outlier gauges stay)."""
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra=NO_EJECTION,
                  lazy_cluster_stats=True)
    try:
        envoy = stack.envoys["us-central1"]
        assert not [s for s in series(prometheus(envoy), "envoy_cluster_upstream_rq_total") if s.get("model")]
        stack.emulators["us-central1"].fail("503")
        assert stack.post("/v1/models/housing:predict", json={"instances": [1]}).status_code == 200
        text = prometheus(envoy)
        attempts = {(s["model"], s.get("region", "")) for s in series(text, "envoy_cluster_upstream_rq_total")
                    if "model" in s}
        assert {("housing", "us-central1"), ("housing", "us-east4"), ("housing", "")} <= attempts
        assert ("churn", "us-east4") not in attempts  # never called
        codes = {(s["model"], s.get("region", ""), s["envoy_response_code_class"])
                 for s in series(text, "envoy_cluster_upstream_rq_xx") if "model" in s}
        assert ("housing", "", "2") in codes  # per model, as the alerts read it
        assert [s for s in series(text, "envoy_cluster_upstream_rq_retry") if s.get("model") == "housing"]
        assert [s for s in series(text, "envoy_cluster_upstream_rq_time_bucket") if s.get("model") == "housing"]
        ejections = series(text, "envoy_cluster_outlier_detection_ejections_active")
        assert ("churn", "us-east4") in {(s["model"], s["region"]) for s in ejections}
    finally:
        stack.close()


def test_a_model_name_with_a_dot_has_whole_series_with_its_model_and_region_tags():
    """Envoy separates stat names with '.': a model `v2.0-model` is `v2_0-model` in its series
    (the clusters' alt_stat_name), not cut apart at the dot."""
    stack = Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",), extra={**NO_EJECTION, "models": {
        "v2.0-model": {"endpoints": {"us-central1": "7771", "us-east4": "7772"}}}})
    try:
        stack.emulators["us-central1"].fail("503")
        stack.post("/v1/models/v2.0-model:predict", json={"instances": [1]})
        text = prometheus(stack.envoys["us-central1"])
        attempts = {(s["model"], s.get("region", "")) for s in series(text, "envoy_cluster_upstream_rq_total")
                    if "model" in s}
        assert {("v2_0-model", "us-central1"), ("v2_0-model", "us-east4"), ("v2_0-model", "")} <= attempts
        assert not [line for line in text.splitlines() if line.startswith("envoy_cluster_0")]  # no cut names
    finally:
        stack.close()
