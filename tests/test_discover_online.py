"""`validate --online` (every endpoint id looked up in its region), and the failures of it and
of `discover`, each said in one line.

Anonymous credentials throughout (real service-account credentials would make google-auth
call the internet): through the functions' `credentials=` seam, or for the CLI through
`--api-endpoint http://127.0.0.1:PORT` and VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS=1 (the `api`
and `anonymous` fixtures of tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")

from google.auth.credentials import AnonymousCredentials  # noqa: E402

from control_plane import discover  # noqa: E402
from control_plane.__main__ import main  # noqa: E402
from control_plane.config import parse_config  # noqa: E402

from .fake_vertex_api import FakeVertexAPI  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


ANON = AnonymousCredentials()


def run(*argv: str) -> int:
    return main(list(argv))


# ---------------------------------------------------------------------------- validate --online


VALIDATE_YAML = """\
project: my-project
regions:
  us-central1: {address: 10.128.0.10, failover: [us-east4]}
  us-east4: {address: 10.150.0.10, failover: [us-central1]}
models:
  housing:
    default: true
    endpoints: {us-central1: "1234567890", us-east4: "9876543210"}
  churn:
    endpoints: {us-central1: "4444", us-east4: "5555"}
"""


def test_validate_online_ok(api, anonymous, tmp_path, capsys):
    api.add("us-central1", "1234567890", "housing")
    api.add("us-east4", "9876543210", "housing")
    api.add("us-central1", "4444", "churn")
    api.add("us-east4", "5555", "churn")
    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", "--online", str(path), "--api-endpoint", api.url) == 0
    out = capsys.readouterr().out
    assert f"{path}: online: OK: 4 endpoint(s) in 2 region(s) of project my-project" in out
    assert len([p for p, _ in api.requests if "/endpoints/" in p]) == 4


def test_validate_online_finds_a_missing_id_and_an_undeployed_endpoint(api, anonymous, tmp_path, capsys):
    api.add("us-central1", "1234567890", "housing")
    api.add("us-central1", "4444", "churn")
    api.add("us-east4", "5555", "churn", deployed=0)
    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", "--online", str(path), "--api-endpoint", api.url) == 1
    out = capsys.readouterr().out
    assert f"{path}: models.housing.endpoints.us-east4: endpoint 9876543210 not found in project my-project " \
           f"region us-east4" in out
    assert f"{path}: models.churn.endpoints.us-east4: endpoint 5555 (\"churn\") in project my-project region " \
           f"us-east4 has no deployed model" in out
    assert "2 problem(s)" in out


def test_validate_online_function_seam_and_dedicated_endpoint_warning(api):
    api.add("us-central1", "1234567890", "housing")
    api.add("us-east4", "9876543210", "housing", dedicatedEndpointEnabled=True,
            dedicatedEndpointDns="9876543210.us-east4-123456789012.prediction.vertexai.goog")
    api.add("us-central1", "4444", "churn")
    api.add("us-east4", "5555", "churn")
    config = parse_config(VALIDATE_YAML)
    report = discover.validate_online(config, "regions.yaml", credentials=ANON, api_endpoint=api.url)
    assert report.problems == [] and report.checked == 4
    assert report.warnings == ["models.housing.endpoints.us-east4: endpoint 9876543210 is a dedicated endpoint: "
                               "Vertex serves it at 9876543210.us-east4-123456789012.prediction.vertexai.goog, but "
                               "regions.us-east4.host is us-east4-aiplatform.googleapis.com"]


def test_validate_without_online_makes_no_api_call(api, anonymous, tmp_path):
    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", str(path), "--api-endpoint", api.url) == 0
    assert api.requests == []


# ---------------------------------------------------------------------------- errors, one line each


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_error_permission_denied(api, anonymous, capsys):
    api.fail("permission_denied")
    assert run("discover", "--project", "my-project", "--region", "us-central1", "--api-endpoint", api.url) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("discover: permission denied in project my-project region us-central1: needs "
                           "aiplatform.endpoints.list (e.g. roles/aiplatform.viewer): Permission "
                           "'aiplatform.endpoints.list' denied on resource"), line


def test_error_api_not_enabled(api, anonymous, capsys, tmp_path):
    api.fail("service_disabled")
    assert run("discover", "--project", "my-project", "--region", "us-central1", "--api-endpoint", api.url) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("discover: the Vertex AI API (aiplatform.googleapis.com) is not enabled in project "
                           "123456789012: gcloud services enable aiplatform.googleapis.com --project 123456789012"), line
    assert "set-quota-project my-project" in line  # the number is not the id we asked for: say why that may be

    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", "--online", str(path), "--api-endpoint", api.url) == 1
    out = capsys.readouterr().out
    assert f"{path}: project: the Vertex AI API (aiplatform.googleapis.com) is not enabled" in out
    assert "1 problem(s)" in out  # said once, not once per endpoint


def test_error_region_unknown(api, anonymous, capsys):
    assert run("discover", "--project", "my-project", "--region", "europe-west4", "--api-endpoint", api.url) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("discover: region 'europe-west4' unknown: no Vertex AI location europe-west4 for project "
                           "my-project (404 from http://127.0.0.1:"), line


def test_error_invalid_region_name(api, anonymous, capsys):
    assert run("discover", "--project", "my-project", "--region", "US_Central", "--api-endpoint", api.url) == 1
    assert _one_line(capsys.readouterr().err) == ("discover: invalid region name 'US_Central': expected a Vertex AI "
                                                  "region such as us-central1")
    assert api.requests == []


def test_error_unreachable_api(anonymous, capsys, tmp_path):
    with FakeVertexAPI() as gone:
        url = gone.url  # a port nothing listens on once it stops
    assert run("discover", "--project", "my-project", "--region", "us-east4", "--api-endpoint", url) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"discover: cannot reach the Vertex AI API at {url} for region us-east4"), line
    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", "--online", str(path), "--api-endpoint", url) == 1
    out = capsys.readouterr().out
    assert f"{path}: regions.us-central1: cannot reach the Vertex AI API at {url}" in out
    assert f"{path}: regions.us-east4: cannot reach" in out and "2 problem(s)" in out


def test_error_no_credentials(api, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(discover.ANONYMOUS_ENV, raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud ADC file
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # not on GCE: don't probe the metadata server
    assert run("discover", "--project", "my-project", "--region", "us-central1", "--api-endpoint", api.url) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("discover: no Google credentials found (Application Default Credentials"), line
    assert "gcloud auth application-default login" in line and "--credentials service_account:PATH" in line

    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", "--online", str(path), "--api-endpoint", api.url) == 1
    out = capsys.readouterr().out
    assert f"{path}: auth: no Google credentials found" in out and "use auth.credentials" in out
    assert api.requests == []


def test_error_bad_service_account_key(api, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(discover.ANONYMOUS_ENV, raising=False)
    assert run("discover", "--project", "p", "--region", "us-central1", "--credentials",
               f"service_account:{tmp_path}/missing.json", "--api-endpoint", api.url) == 1
    assert _one_line(capsys.readouterr().err) == (f"discover: cannot use service-account key {tmp_path}/missing.json: "
                                                  f"No such file or directory")
    assert run("discover", "--project", "p", "--region", "us-central1", "--credentials", "magic") == 1
    assert "bad --credentials 'magic'" in capsys.readouterr().err


def test_missing_extra_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "google.cloud.aiplatform_v1", None)  # import fails as if not installed
    assert run("discover", "--project", "p", "--region", "us-central1") == 1
    line = _one_line(capsys.readouterr().err)
    assert "pip install 'vertex-gateway[vertex]'" in line, line
    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    assert run("validate", "--online", str(path)) == 1
    assert "pip install 'vertex-gateway[vertex]'" in capsys.readouterr().out


def test_control_plane_runs_without_the_extra(tmp_path):
    """Importing the CLI, the server and the discover module never imports google-cloud-aiplatform."""
    path = tmp_path / "regions.yaml"
    path.write_text(VALIDATE_YAML)
    code = ("import sys\n"
            "sys.modules['google.cloud.aiplatform_v1'] = None; sys.modules['google.cloud.aiplatform'] = None\n"
            "import control_plane.app, control_plane.discover\n"
            "from control_plane.__main__ import main\n"
            f"rc = main(['validate', {str(path)!r}])\n"
            "assert not any(m.startswith('google.cloud.aiplatform') and sys.modules[m] for m in sys.modules)\n"
            "sys.exit(rc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: project my-project" in result.stdout


def test_validate_online_uses_each_models_auth_profile(api, monkeypatch):
    """No seam credentials: make_credentials (the token refresher's) per profile in use, each built once."""
    from control_plane import tokens

    api.add("us-central1", "1234567890", "housing")
    api.add("us-east4", "9876543210", "housing")
    api.add("us-central1", "4444", "churn")
    api.add("us-east4", "5555", "churn")
    built = []

    def fake_make_credentials(profile):
        built.append(profile.credentials)
        return AnonymousCredentials()

    monkeypatch.setattr(tokens, "make_credentials", fake_make_credentials)
    config = parse_config(VALIDATE_YAML.replace("  churn:\n", "  churn:\n    auth: producer-b\n")
                          + "auth:\n  profiles:\n    producer-b: {credentials: 'service_account:/keys/b.json'}\n")
    report = discover.validate_online(config, "regions.yaml", api_endpoint=api.url)
    assert report.problems == [] and report.checked == 4
    assert sorted(built) == ["adc", "service_account:/keys/b.json"]


def test_validate_online_token_refresh_failure_is_reported_at_the_profile(api, monkeypatch):
    import google.auth.credentials
    import google.auth.exceptions

    from control_plane import tokens

    class Revoked(google.auth.credentials.Credentials):
        service_account_email = "gateway@my-project.iam.gserviceaccount.com"

        def refresh(self, request):
            raise google.auth.exceptions.RefreshError("invalid_grant: Invalid JWT Signature.", {"error": "invalid_grant"})

    monkeypatch.setattr(tokens, "make_credentials", lambda profile: Revoked())
    report = discover.validate_online(parse_config(VALIDATE_YAML), "regions.yaml", api_endpoint=api.url)
    assert [str(p) for p in report.problems] == [
        "regions.yaml: auth: could not get an access token for gateway@my-project.iam.gserviceaccount.com: "
        "invalid_grant: Invalid JWT Signature."]
    assert api.requests == []


def test_explain_other_failures_in_one_line():
    import requests
    from google.api_core import exceptions as api

    where = {"project": "p", "region": "us-west9", "url": "https://us-west9-aiplatform.googleapis.com"}
    dns = requests.exceptions.ConnectionError("HTTPSConnectionPool(host='us-west9-aiplatform.googleapis.com', "
                                              "port=443): Max retries exceeded (Caused by NameResolutionError(...))")
    assert discover.explain(dns, **where).message == (
        "cannot reach the Vertex AI API at https://us-west9-aiplatform.googleapis.com for region us-west9 "
        "(the name does not resolve); is 'us-west9' a Vertex AI region?")
    bad = discover.explain(api.BadRequest("Location us-west9 is not supported."), **where)
    assert (bad.kind, bad.message) == ("region", "region 'us-west9' is not a Vertex AI location for project p: "
                                                 "Location us-west9 is not supported.")
    assert discover.explain(api.Unauthorized("Request had invalid authentication credentials."), **where).message \
        == "the credentials were rejected (401): Request had invalid authentication credentials."
    assert discover.explain(requests.exceptions.ReadTimeout("read timed out"), **where).message.endswith("(timed out)")
