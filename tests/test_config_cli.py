"""`python -m control_plane validate` (and `serve`) on regions.yaml files: exit codes, every
problem listed, no traceback. Subprocesses; no network, no Envoy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.config import ConfigError, load_config

from .config_problems import write
from .configs import BASE_YAML, base

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "control_plane", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- CLI


def test_cli_validate_ok(tmp_path):
    path = write(tmp_path, BASE_YAML)
    result = cli("validate", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert "OK" in lines[0]
    assert str(path) in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_validate_lists_every_problem(tmp_path):
    text = BASE_YAML.replace("failover: [us-central1]", "failover: [us-east4, mars-1]") + "colour: blue\n" \
        + "policy: {timeout: soon}\n"
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert len(problems) == 4
    result = cli("validate", str(path))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    for problem in problems:
        assert str(problem) in output
    assert f"{path}:9: regions.us-east4.failover[0]: region 'us-east4' cannot fail over to itself" in output
    assert f"{path}:9: regions.us-east4.failover[1]: unknown region 'mars-1'" in output
    assert f"{path}:16: colour: unknown key" in output
    assert f"{path}:17: policy.timeout: bad duration 'soon'" in output
    assert "OK" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("text", ["", "- a\n", "project: [\n"], ids=["empty", "list", "invalid-yaml"])
def test_cli_validate_bad_files(tmp_path, text):
    path = write(tmp_path, text)
    result = cli("validate", str(path))
    assert result.returncode == 1
    assert str(path) in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_cli_validate_missing_file(tmp_path):
    path = tmp_path / "does-not-exist.yaml"
    result = cli("validate", str(path))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert str(path) in output
    assert "cannot read" in output and "No such file" in output
    assert "Traceback" not in output


def test_cli_validate_builds_what_serve_builds(tmp_path):
    """exit 0 means serve loads it: the bounds above fail validate exactly as they fail serve."""
    data = base()
    data["policy"] = {"max_request_bytes": 5_000_000_000}
    result = cli("validate", str(write(tmp_path, data)))
    assert result.returncode == 1 and "policy.max_request_bytes" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_validate_auth_list_no_traceback(tmp_path):
    data = base()
    data["regions"]["us-east4"]["auth"] = ["a", "b"]
    result = cli("validate", str(write(tmp_path, data)))
    assert result.returncode == 1 and "regions.us-east4.auth" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_cli_serve_refuses_a_bad_file_with_exit_1(tmp_path):
    data = base()
    data["policy"] = {"max_request_bytes": 5_000_000_000}
    result = cli("serve", "--config", str(write(tmp_path, data)), "--xds-port", "0", "--admin-port", "0")
    assert result.returncode == 1
    assert "refusing to start" in result.stderr and "policy.max_request_bytes" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
