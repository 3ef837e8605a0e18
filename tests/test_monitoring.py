"""deploy/monitoring: the alert rules pass `promtool check rules` and their own `promtool test
rules`, every alert links a runbook entry that exists, and every series the dashboard and the
alerts query was seen exported by a real Envoy and the control plane."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from control_plane.lab.harness import wait_for
from control_plane.lab.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: apt-get install "
                                                              "prometheus)")
SERIES = re.compile(r"\b((?:envoy|vertex_gateway)_[a-z0-9_]+)\b")
LABELS = re.compile(r"\{[^}]*\}|\b(?:by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)|\"[^\"]*\"")


def series_in(query: str) -> set[str]:
    """Metric names a PromQL query reads (label names and strings left out)."""
    return set(SERIES.findall(LABELS.sub(" ", query)))


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    return [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_alert_rules_pass_promtool_check():
    done = promtool("check", "rules", ALERTS.name)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_every_alert_fires_on_its_sample_series():
    done = promtool("test", "rules", "alerts-test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    tested = {t["alertname"] for case in yaml.safe_load((MONITORING / "alerts-test.yaml").read_text())["tests"]
              for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    assert tested == {r["alert"] for r in rules() if "alert" in r}


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    # promtool parses rule expressions: the dashboard's queries as recording rules.
    group = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": q.replace("$__rate_interval", "5m")}
        for i, q in enumerate(dashboard_queries())]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(group))
    done = promtool("check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_links_a_runbook_entry_that_exists():
    runbook = (ROOT / "docs" / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    for rule in rules():
        if "alert" in rule:
            url = rule["annotations"]["runbook_url"]
            assert url.startswith("docs/RUNBOOK.md#") and url.split("#")[1] in anchors, rule["alert"]


def test_every_series_the_dashboard_and_alerts_use_is_documented():
    documented = set(SERIES.findall((ROOT / "docs" / "METRICS.md").read_text()))
    used = {s for q in dashboard_queries() + [r["expr"] for r in rules()] for s in series_in(q)}
    assert used <= documented, used - documented


def exported(text: str) -> set[str]:
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}


@pytest.mark.e2e
def test_every_series_the_dashboard_and_alerts_use_is_exported_by_envoy_and_the_control_plane():
    with Stack(regions=("us-central1", "us-east4"), envoys=("us-central1",),
               extra={"observability": {"load_reports": {"interval": "0.2s"}}}) as stack:
        envoy = stack.envoys["us-central1"]
        stack.post("/predict", json={"instances": [1]})
        stack.emulators["us-central1"].fail("503")
        stack.update_config({"policy": {"outlier_detection": {"consecutive_5xx": 1}}})  # a reload
        stack.wait_synced()
        for _ in range(3):
            assert stack.post("/predict", json={"instances": [1]}).status_code == 200  # failed over

        def plane_metrics() -> str:
            # An Envoy does not report the interval in which it started tracking a (changed)
            # cluster: keep failing over until a report counted one.
            assert stack.post("/predict", json={"instances": [1]}).status_code == 200
            text = requests.get(stack.plane.admin_url + "/metrics", timeout=5).text
            return text if "vertex_gateway_failover_answers_total{" in text else ""

        seen = exported(wait_for(plane_metrics, timeout=15, interval=0.1, what="load reports in /metrics"))
        seen |= exported(envoy.admin("stats/prometheus"))
    used = {s for q in dashboard_queries() + [r["expr"] for r in rules()] for s in series_in(q)}
    assert used <= seen, used - seen
