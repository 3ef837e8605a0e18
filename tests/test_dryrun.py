"""`validate --show [--against OLD] [--json]`: the CLI as an operator runs it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.lab.harness import write_config

ROOT = Path(__file__).resolve().parent.parent
VERSION = re.compile(r"^[0-9a-f]{16}$")

# Three regions; europe-west4 does not fail over to us-east4, so an edit of us-east4's
# endpoint must not touch europe-west4's endpoints.
CONFIG = {
    "project": "p-1",
    "listener": {"port": 8080},
    "regions": {
        "us-central1": {"address": "10.0.0.1", "failover": ["us-east4"]},
        "us-east4": {"address": "10.0.0.2", "failover": ["us-central1"]},
        "europe-west4": {"address": "10.0.0.3", "tls": False, "port": 9000, "failover": ["us-central1"]},
    },
    "models": {
        "housing": {"default": True, "endpoints": {"us-central1": "111", "us-east4": "222", "europe-west4": "333"}},
        "churn": {"endpoints": {"us-central1": "444", "us-east4": "555"}},
    },
}


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control_plane", "validate", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def edited() -> dict:
    return copy.deepcopy(CONFIG)


def sections(stdout: str) -> dict[str, str]:
    """region -> its block of the text output."""
    blocks = re.split(r"^(?=Envoy in )", stdout, flags=re.M)
    return {re.match(r"Envoy in (\S+)", b).group(1): b for b in blocks if b.startswith("Envoy in ")}


def change_lines(block: str) -> list[tuple[str, str, str]]:
    """(sign, API, name) of each change line of a region's diff."""
    return [tuple(m.groups()) for m in re.finditer(r"^  ([+~-])\s+(\S+)\s+(\S+)", block, re.M)]


@pytest.fixture
def old(tmp_path) -> Path:
    return write_config(tmp_path / "old.yaml", CONFIG)


def test_show_lists_resources_chains_and_upstream_paths(old):
    result = cli("--show", str(old))
    assert result.returncode == 0, result.stderr
    first, *_ = result.stdout.splitlines()
    assert first.startswith(f"{old}: OK: project p-1, 3 region(s), 2 model(s)")  # the usual summary stays
    blocks = sections(result.stdout)
    assert list(blocks) == ["us-central1", "us-east4", "europe-west4"]  # file order
    central = blocks["us-central1"]
    assert central.startswith("Envoy in us-central1 (listener 0.0.0.0:8080): 12 resources")
    for api, name in [("CDS", "model/housing"), ("CDS", "model/housing@us-central1"),
                      ("CDS", "model/housing@us-east4"), ("CDS", "model/churn@us-east4"),
                      ("EDS", "model/housing@us-east4"), ("LDS", "ingress"), ("RDS", "vertex")]:
        assert re.search(rf"^  {api}\s+{re.escape(name)}\s+[0-9a-f]{{16}}$", central, re.M), (api, name)
    assert re.search(r"^  SDS\s+token/default\s+\(access token", central, re.M)
    # failover chains, local region first
    assert "    housing (default): us-central1 -> us-east4\n" in central
    assert "    housing (default): us-east4 -> us-central1\n" in blocks["us-east4"]
    assert "    housing (default): europe-west4 -> us-central1\n" in blocks["europe-west4"]
    assert "    churn: europe-west4 -> us-central1\n" not in blocks["europe-west4"]
    assert "    churn: us-central1\n" in blocks["europe-west4"]  # churn is not served in europe-west4
    # the upstream each region of the chain is reached at, with that region's path
    assert re.search(r"^      us-east4\s+10\.0\.0\.2:443\s+tls\s+host us-east4-aiplatform\.googleapis\.com\s+"
                     r"path /v1/projects/p-1/locations/us-east4/endpoints/222:\{verb\}$", central, re.M)
    assert re.search(r"^      europe-west4\s+10\.0\.0\.3:9000\s+plaintext\s+host europe-west4-aiplatform"
                     r"\.googleapis\.com\s+path /v1/projects/p-1/locations/europe-west4/endpoints/333:\{verb\}$",
                     blocks["europe-west4"], re.M)
    # columns are aligned: every resource line of a block puts its version at the same column
    columns = {line.rindex(" ") for line in central.splitlines() if re.match(r"  [CELR]DS ", line)}
    assert len(columns) == 1


def test_changing_one_endpoint_id_changes_only_that_regions_endpoints_and_the_routes(tmp_path, old):
    config = edited()
    config["models"]["housing"]["endpoints"]["us-east4"] = "999"
    new = write_config(tmp_path / "new.yaml", config)
    result = cli("--show", str(new), "--against", str(old))
    assert result.returncode == 0, result.stderr
    blocks = sections(result.stdout)
    for region in ("us-central1", "us-east4"):  # both fail over to us-east4: they hold its endpoints
        assert change_lines(blocks[region]) == [("~", "EDS", "model/housing@us-east4"), ("~", "RDS", "vertex")]
        assert "2 changed, 0 added, 0 removed, 10 unchanged" in blocks[region]
    # europe-west4 never sends to us-east4: only its routes change (they match every endpoint id)
    assert change_lines(blocks["europe-west4"]) == [("~", "RDS", "vertex")]
    assert "1 changed, 0 added, 0 removed, 9 unchanged" in blocks["europe-west4"]
    # a "~" line says old -> new: the versions the plain --show of each file lists
    old_eds = _version(cli("--show", str(old)).stdout, "us-central1", "EDS", "model/housing@us-east4")
    new_eds = _version(cli("--show", str(new)).stdout, "us-central1", "EDS", "model/housing@us-east4")
    assert old_eds != new_eds
    assert re.search(rf"~\s+EDS\s+model/housing@us-east4\s+{old_eds} -> {new_eds}$", blocks["us-central1"], re.M)
    # and the upstream path shows the edit
    assert "path /v1/projects/p-1/locations/us-east4/endpoints/999:{verb}" in blocks["us-central1"]
    assert re.search(r"^        was\s.*endpoints/222:\{verb\}$", blocks["us-central1"], re.M)


def _version(stdout: str, region: str, api: str, name: str) -> str:
    return re.search(rf"^  {api}\s+{re.escape(name)}\s+([0-9a-f]{{16}})$", sections(stdout)[region], re.M).group(1)


def test_adding_a_model_shows_its_clusters_as_added(tmp_path, old):
    config = edited()
    config["models"]["fraud"] = {"endpoints": {"us-central1": "777", "europe-west4": "888"}}
    new = write_config(tmp_path / "new.yaml", config)
    result = cli("--show", str(new), "--against", str(old))
    assert result.returncode == 0, result.stderr
    blocks = sections(result.stdout)
    assert change_lines(blocks["us-central1"]) == [
        ("+", "CDS", "model/fraud"), ("+", "CDS", "model/fraud@us-central1"),
        ("+", "EDS", "model/fraud@us-central1"), ("~", "RDS", "vertex")]
    assert change_lines(blocks["europe-west4"]) == [
        ("+", "CDS", "model/fraud"), ("+", "CDS", "model/fraud@europe-west4"), ("+", "CDS", "model/fraud@us-central1"),
        ("+", "EDS", "model/fraud@europe-west4"), ("+", "EDS", "model/fraud@us-central1"), ("~", "RDS", "vertex")]
    assert "    fraud: us-central1  (new)\n" in blocks["us-central1"]
    assert "    fraud: europe-west4 -> us-central1  (new)\n" in blocks["europe-west4"]


def test_removing_a_model_shows_its_clusters_as_removed(tmp_path, old):
    config = edited()
    del config["models"]["churn"]
    new = write_config(tmp_path / "new.yaml", config)
    result = cli("--show", str(new), "--against", str(old))
    assert result.returncode == 0, result.stderr
    blocks = sections(result.stdout)
    assert change_lines(blocks["us-east4"]) == [
        ("-", "CDS", "model/churn"), ("-", "CDS", "model/churn@us-central1"), ("-", "CDS", "model/churn@us-east4"),
        ("-", "EDS", "model/churn@us-central1"), ("-", "EDS", "model/churn@us-east4"), ("~", "RDS", "vertex")]
    assert "    churn: removed\n" in blocks["us-east4"]


def test_an_unchanged_file_shows_no_change(old):
    result = cli("--show", str(old), "--against", str(old))
    assert result.returncode == 0, result.stderr
    for region, block in sections(result.stdout).items():
        assert change_lines(block) == [], region
        assert "no change (" in block.splitlines()[0]


def test_adding_a_region_and_removing_one(tmp_path, old):
    config = edited()
    config["regions"]["asia-east1"] = {"address": "10.0.0.4", "failover": ["us-central1"]}
    config["models"]["housing"]["endpoints"]["asia-east1"] = "666"
    del config["regions"]["europe-west4"]
    del config["models"]["housing"]["endpoints"]["europe-west4"]
    new = write_config(tmp_path / "new.yaml", config)
    result = cli("--show", str(new), "--against", str(old))
    assert result.returncode == 0, result.stderr
    blocks = sections(result.stdout)
    assert list(blocks) == ["us-central1", "us-east4", "asia-east1", "europe-west4"]
    assert "new region" in blocks["asia-east1"].splitlines()[0]
    assert {sign for sign, _, _ in change_lines(blocks["asia-east1"])} == {"+"}
    assert "region removed" in blocks["europe-west4"].splitlines()[0]
    assert {sign for sign, _, _ in change_lines(blocks["europe-west4"])} == {"-"}


def test_json(tmp_path, old):
    config = edited()
    config["models"]["housing"]["endpoints"]["us-east4"] = "999"
    del config["models"]["churn"]
    new = write_config(tmp_path / "new.yaml", config)
    result = cli("--show", "--json", str(new), "--against", str(old))
    assert result.returncode == 0, result.stderr
    assert "OK: project p-1" in result.stderr  # the summary; stdout is the document alone
    document = json.loads(result.stdout)
    assert document["config"] == str(new) and document["against"]["config"] == str(old)
    assert list(document["regions"]) == ["us-central1", "us-east4", "europe-west4"]
    central = document["regions"]["us-central1"]
    assert central["listener"] == "0.0.0.0:8080"
    assert sorted(central["resources"]["Cluster"]) == ["model/housing", "model/housing@us-central1",
                                                       "model/housing@us-east4"]
    assert all(VERSION.match(v) for of_type in central["resources"].values() for v in of_type.values())
    assert central["secrets"] == ["token/default"]
    housing = central["models"]["housing"]
    assert housing["default"] is True and housing["chain"] == ["us-central1", "us-east4"]
    assert housing["upstreams"]["us-east4"] == {
        "address": "10.0.0.2", "port": 443, "tls": True, "host": "us-east4-aiplatform.googleapis.com",
        "path": "/v1/projects/p-1/locations/us-east4/endpoints/999:{verb}", "kind": "vertex",
        "credential": "access_token default"}
    diff = central["diff"]
    assert diff["status"] == "changed"
    assert [(c["type"], c["name"]) for c in diff["changed"]] == [
        ("ClusterLoadAssignment", "model/housing@us-east4"), ("RouteConfiguration", "vertex")]
    assert all(VERSION.match(c["old_version"]) and VERSION.match(c["version"])
               and c["old_version"] != c["version"] for c in diff["changed"])
    assert diff["changed"][0]["version"] == central["resources"]["ClusterLoadAssignment"]["model/housing@us-east4"]
    assert [(c["type"], c["name"]) for c in diff["removed"]] == [
        ("Cluster", "model/churn"), ("Cluster", "model/churn@us-central1"), ("Cluster", "model/churn@us-east4"),
        ("ClusterLoadAssignment", "model/churn@us-central1"), ("ClusterLoadAssignment", "model/churn@us-east4")]
    assert diff["added"] == [] and diff["unchanged"] == 5
    assert diff["models"] == {"added": [], "removed": ["churn"], "chain_changed": [],
                              "upstream_changed": ["housing"]}
    # without --against: the plan alone
    plain = json.loads(cli("--show", "--json", str(old)).stdout)
    assert plain["against"] is None and "diff" not in plain["regions"]["us-east4"]
    assert plain["regions"]["europe-west4"]["models"]["churn"] == {"default": False, "chain": ["us-central1"],
                                                                    "strategy": "failover", "weights": None,
                                                                    "upstreams": plain["regions"]["europe-west4"]
                                                                    ["models"]["churn"]["upstreams"]}


def test_output_is_deterministic(old):
    # Separate processes: every version (listener included) is the same content hash.
    first, second = cli("--show", str(old)), cli("--show", str(old))
    assert first.returncode == 0 and first.stdout == second.stdout
    first = cli("--show", "--json", str(old), "--against", str(old))
    assert first.stdout == cli("--show", "--json", str(old), "--against", str(old)).stdout


def test_invalid_files_exit_1(tmp_path, old):
    broken = tmp_path / "broken.yaml"
    broken.write_text("project: p\nregions: {}\n")
    result = cli("--show", str(old), "--against", str(broken))
    assert result.returncode == 1
    assert f"{broken}: invalid, cannot diff against it" in result.stdout
    assert "Envoy in" not in result.stdout
    result = cli("--show", str(broken), "--against", str(old))
    assert result.returncode == 1 and "problem(s)" in result.stdout and "Envoy in" not in result.stdout
    # plain validate is unchanged
    assert cli(str(old)).returncode == 0 and cli(str(broken)).returncode == 1
    assert cli(str(old)).stdout.count("\n") == 1


def test_show_names_the_strategy_and_weights(tmp_path):
    path = tmp_path / "weighted.yaml"
    path.write_text("project: p\nregions:\n  us-central1: {address: 10.0.0.1}\n  us-east4: {address: 10.0.0.2}\n"
                    "models:\n  m:\n    default: true\n    strategy: weighted\n"
                    "    weights: {us-central1: 80, us-east4: 20}\n"
                    "    endpoints: {us-central1: '1', us-east4: '2'}\n")
    out = cli("--show", str(path)).stdout
    assert "m (default): weighted over us-central1=80, us-east4=20" in out
