"""`discover` and `validate --online`: the real gapic EndpointServiceClient (REST) against a local fake.

Anonymous credentials throughout (real service-account credentials would make google-auth
call the internet): through the functions' `credentials=` seam, or for the CLI through
`--api-endpoint http://127.0.0.1:PORT` and VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")

import yaml  # noqa: E402
from google.auth.credentials import AnonymousCredentials  # noqa: E402

from control_plane import discover  # noqa: E402
from control_plane.__main__ import main  # noqa: E402
from control_plane.config import load_config, parse_config  # noqa: E402

from .fake_vertex_api import FakeVertexAPI  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ANON = AnonymousCredentials()
REGIONS = ["us-central1", "us-east4"]


@pytest.fixture
def api():
    with FakeVertexAPI(project="my-project", project_number="123456789012") as fake:
        yield fake


@pytest.fixture
def anonymous(monkeypatch):
    monkeypatch.setenv(discover.ANONYMOUS_ENV, "1")


def populate(api: FakeVertexAPI) -> None:
    api.add("us-central1", "1234567890", "Housing Prod", private_service_connect_config={
        "enablePrivateServiceConnect": True, "projectAllowlist": ["consumer-project"],
        "serviceAttachment": "projects/tenant/regions/us-central1/serviceAttachments/sa-1234567890"})
    api.add("us-east4", "9876543210", "Housing Prod", dedicatedEndpointEnabled=True,
            dedicatedEndpointDns="9876543210.us-east4-123456789012.prediction.vertexai.goog")
    api.add("us-central1", "4444", "churn", network="projects/123456789012/global/networks/vpc-a")
    api.add("us-east4", "5555", "scratch", deployed=0)


def run(*argv: str) -> int:
    return main(list(argv))


# ---------------------------------------------------------------------------- listing and grouping


def test_lists_and_groups_endpoints_across_two_regions(api):
    populate(api)
    endpoints = discover.list_endpoints("my-project", REGIONS, credentials=ANON, api_endpoint=api.url)
    assert sorted((e.region, e.id, e.display_name) for e in endpoints) == [
        ("us-central1", "1234567890", "Housing Prod"), ("us-central1", "4444", "churn"),
        ("us-east4", "5555", "scratch"), ("us-east4", "9876543210", "Housing Prod")]
    housing = next(e for e in endpoints if e.id == "1234567890")
    assert housing.deployed_models[0].traffic == 100
    assert housing.private_service_connect["project_allowlist"] == ["consumer-project"]

    groups = discover.group_endpoints(endpoints, REGIONS)
    assert {g.key: g.ids for g in groups} == {
        "churn": {"us-central1": "4444"},
        "housing-prod": {"us-central1": "1234567890", "us-east4": "9876543210"},
        "scratch": {},  # no deployed model: listed, left out of models:
    }
    text = discover.render("my-project", REGIONS, endpoints, groups)
    assert yaml.safe_load(text) == {"models": {
        "churn": {"endpoints": {"us-central1": "4444"}},
        "housing-prod": {"endpoints": {"us-central1": "1234567890", "us-east4": "9876543210"}}}}
    for expected in ("private_service_connect_config: enabled, service_attachment projects/tenant/regions/"
                     "us-central1/serviceAttachments/sa-1234567890, project_allowlist [consumer-project]",
                     "dedicated_endpoint_dns: 9876543210.us-east4-123456789012.prediction.vertexai.goog",
                     "network: projects/123456789012/global/networks/vpc-a",
                     "5555        \"scratch\"  deployed: no deployed model",
                     "endpoint 5555 has no deployed model: left out",
                     "deployed model id 12345678900, traffic 100%"):
        assert expected in text, text
    # the ids are quoted strings, as regions.yaml wants them
    assert 'us-central1: "1234567890"' in text


def test_slug_and_key_collisions():
    assert discover.slug("Housing Prod (v2)") == "housing-prod-v2"
    assert discover.slug("Modèle_français") == "modele-francais"
    assert discover.slug("2024 model") == "model-2024-model"
    assert discover.slug("!!!") == "model"
    endpoints = [discover.Endpoint("us-central1", "1", "Housing", [discover.DeployedModel("1", "m/1")]),
                 discover.Endpoint("us-central1", "2", "housing", [discover.DeployedModel("2", "m/2")])]
    assert [g.key for g in discover.group_endpoints(endpoints, ["us-central1"])] == ["housing", "housing-2"]


def test_same_display_name_twice_in_a_region_uses_the_one_with_a_deployed_model(api):
    api.add("us-central1", "111", "housing", deployed=0)
    api.add("us-central1", "222", "housing")
    groups = discover.group_endpoints(discover.list_endpoints("my-project", ["us-central1"], credentials=ANON,
                                                              api_endpoint=api.url), ["us-central1"])
    assert groups[0].ids == {"us-central1": "222"}
    assert "us-central1: endpoint 111 has no deployed model: left out" in groups[0].notes


def test_pagination_follows_next_page_token():
    with FakeVertexAPI(max_page_size=2) as api:
        for i in range(5):
            api.add("us-central1", f"10{i}", f"model-{i}")
        endpoints = discover.list_endpoints("my-project", ["us-central1"], credentials=ANON, api_endpoint=api.url)
        assert [e.id for e in endpoints] == ["100", "101", "102", "103", "104"]
        pages = api.list_requests("us-central1")
        assert len(pages) == 3
        assert "pageToken" not in pages[0] and all(p.get("pageToken") for p in pages[1:])


def test_display_name_filter_is_sent_to_the_api(api):
    populate(api)
    api.add("us-east4", "777", 'quote "me"')
    endpoints = discover.list_endpoints("my-project", REGIONS, credentials=ANON, api_endpoint=api.url,
                                        display_name="Housing Prod")
    assert sorted(e.id for e in endpoints) == ["1234567890", "9876543210"]
    assert api.list_requests("us-east4")[0]["filter"] == 'display_name="Housing Prod"'
    quoted = discover.list_endpoints("my-project", ["us-east4"], credentials=ANON, api_endpoint=api.url,
                                     display_name='quote "me"')
    assert [e.id for e in quoted] == ["777"]


def test_cli_discover_prints_a_models_section(api, anonymous, capsys):
    populate(api)
    assert run("discover", "--project", "my-project", "--region", "us-central1", "--region", "us-east4",
               "--display-name", "Housing Prod", "--api-endpoint", api.url) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out) == {"models": {"housing-prod": {"endpoints": {
        "us-central1": "1234567890", "us-east4": "9876543210"}}}}
    assert '# display name "Housing Prod"' in out


def test_cli_discover_display_name_not_found(api, anonymous, capsys):
    populate(api)
    assert run("discover", "--project", "my-project", "--region", "us-central1,us-east4",
               "--display-name", "nope", "--api-endpoint", api.url) == 1
    assert "discover: no endpoint named 'nope' in project my-project region(s) us-central1, us-east4" \
        in capsys.readouterr().err


def test_cli_discover_as_a_subprocess(api):
    """`python -m control_plane discover` exactly as an operator runs it (the env switch for credentials)."""
    populate(api)
    result = subprocess.run(
        [sys.executable, "-m", "control_plane", "discover", "--project", "my-project", "--region", "us-central1",
         "--region", "us-east4", "--api-endpoint", api.url],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, discover.ANONYMOUS_ENV: "1"})
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["models"]["housing-prod"]["endpoints"] == {
        "us-central1": "1234567890", "us-east4": "9876543210"}


# ---------------------------------------------------------------------------- --write


REGIONS_YAML = """\
# Production gateway: edit with care.
project: my-project            # the producer project

regions:
  us-central1:
    address: 10.128.0.10       # PSC forwarding rule
    failover:
      - us-east4
  us-east4:
    address: 10.150.0.10
    failover: [us-central1]

models:
  # the one the app calls
  housing:
    default: true
    endpoints:
      us-central1: "1234567890"   # v3, deployed 2025-01

  # publisher model, not an endpoint
  gemini:
    publisher_model: google/gemini-2.0-flash
    regions: [us-central1]

# defaults for everything
policy:
  timeout: 30s   # keep short
"""


def _is_subsequence(original: list[str], merged: list[str]) -> bool:
    it = iter(merged)
    return all(any(line == candidate for candidate in it) for line in original)


def test_write_merges_keeping_comments_and_order(api, anonymous, tmp_path, capsys):
    populate(api)
    path = tmp_path / "regions.yaml"
    path.write_text(REGIONS_YAML)
    assert run("discover", "--project", "my-project", "--region", "us-central1", "--region", "us-east4",
               "--write", str(path), "--api-endpoint", api.url) == 0
    merged = path.read_text()
    err = capsys.readouterr().err
    assert "models.housing.endpoints.us-east4: added 9876543210" in err
    assert "added model churn (us-central1: 4444)" in err

    # every line the operator wrote is still there, in the same order, with its comments
    assert _is_subsequence(REGIONS_YAML.splitlines(), merged.splitlines()), merged
    lines = merged.splitlines()
    # the new endpoint follows the existing one; the comment block for gemini stays above gemini
    at = lines.index('      us-central1: "1234567890"   # v3, deployed 2025-01')
    assert lines[at + 1] == '      us-east4: "9876543210"'
    assert lines[at + 2:at + 5] == ["", "  # publisher model, not an endpoint", "  gemini:"]
    # the new model comes last in models:, and the comment for policy stays right above policy:
    at = lines.index("  churn:  # display name \"churn\" (added by discover)")
    assert lines[at - 2:at] == ["    regions: [us-central1]", ""]  # models are separated by blank lines here
    assert lines[at + 1:at + 7] == ["    endpoints:", '      us-central1: "4444"', "", "# defaults for everything",
                                    "policy:", "  timeout: 30s   # keep short"]
    assert "scratch" not in merged  # no deployed model
    # matched by endpoint id, not by the display name's slug: no housing-prod model
    assert "housing-prod" not in merged
    config = parse_config(merged, str(path))
    assert config.models["housing"].endpoints == {"us-central1": "1234567890", "us-east4": "9876543210"}
    assert config.models["churn"].endpoints == {"us-central1": "4444"}
    assert config.default_model == "housing"

    # a second run changes nothing
    assert run("discover", "--write", str(path), "--api-endpoint", api.url) == 0
    assert path.read_text() == merged
    assert "already up to date" in capsys.readouterr().err


def test_write_updates_the_id_of_a_model_with_the_same_key(api, anonymous, tmp_path, capsys):
    api.add("us-central1", "1234567890", "housing")
    api.add("us-east4", "2222", "housing")
    path = tmp_path / "regions.yaml"
    path.write_text(REGIONS_YAML.replace('us-central1: "1234567890"', 'us-central1: "1234567890"\n'
                                                                      '      us-east4: "1111"   # old one'))
    assert run("discover", "--write", str(path), "--api-endpoint", api.url) == 0
    assert "models.housing.endpoints.us-east4: 1111 -> 2222" in capsys.readouterr().err
    merged = path.read_text()
    assert '      us-east4: "2222"   # old one' in merged
    assert load_config(path).models["housing"].endpoints["us-east4"] == "2222"


def test_write_into_a_file_without_models_marks_a_default(api, anonymous, tmp_path):
    populate(api)
    path = tmp_path / "regions.yaml"
    path.write_text(REGIONS_YAML.split("models:")[0] + "models: {}\n")
    assert run("discover", "--write", str(path), "--region", "us-central1", "--api-endpoint", api.url) == 0
    config = load_config(path)
    assert config.default_model == "churn"
    assert config.models["housing-prod"].endpoints == {"us-central1": "1234567890"}


def test_write_refuses_a_region_the_file_does_not_define(api, anonymous, tmp_path, capsys):
    populate(api)
    path = tmp_path / "regions.yaml"
    path.write_text(REGIONS_YAML)
    assert run("discover", "--region", "us-central1", "--region", "europe-west4", "--write", str(path),
               "--api-endpoint", api.url) == 1
    err = capsys.readouterr().err
    assert f"discover: {path} does not define region(s) europe-west4 under regions:" in err
    assert path.read_text() == REGIONS_YAML
    assert api.requests == []  # refused before asking the API anything


def test_write_refuses_a_result_that_would_not_validate(api, anonymous, tmp_path, capsys):
    api.add("us-central1", "5", "gemini")  # slug collides with the publisher model; its id is new
    path = tmp_path / "regions.yaml"
    path.write_text(REGIONS_YAML)
    assert run("discover", "--write", str(path), "--region", "us-central1", "--api-endpoint", api.url) == 0
    assert "models.gemini is a publisher model" in capsys.readouterr().err
    assert path.read_text() == REGIONS_YAML

    broken = REGIONS_YAML.replace("    default: true\n", "")  # no default model, and none will be added
    path.write_text(broken)
    api.add("us-central1", "1234567890", "housing")
    api.add("us-east4", "6", "housing")
    assert run("discover", "--write", str(path), "--api-endpoint", api.url) == 1
    assert "the merged file would not be valid" in capsys.readouterr().err
    assert path.read_text() == broken


def test_write_keeps_four_space_indentation_and_the_comments_at_the_end(api, anonymous, tmp_path):
    api.add("us-central1", "1234567890", "housing")
    api.add("us-east4", "9876543210", "housing")
    api.add("us-east4", "31", "Fraud Model")
    original = ("project: my-project\n"
                "regions:\n"
                "    us-central1:\n"
                "        address: 10.128.0.10\n"
                "        failover:\n"
                "        - us-east4\n"
                "    us-east4:\n"
                "        address: 10.150.0.10\n"
                "models:\n"
                "    housing:\n"
                "        default: true\n"
                "        endpoints:\n"
                "            us-central1: '1234567890'\n"
                "\n"
                "# the end: nothing below\n")
    path = tmp_path / "regions.yaml"
    path.write_text(original)
    assert run("discover", "--write", str(path), "--api-endpoint", api.url) == 0
    assert path.read_text() == ("project: my-project\n"
                                "regions:\n"
                                "    us-central1:\n"
                                "        address: 10.128.0.10\n"
                                "        failover:\n"
                                "        - us-east4\n"
                                "    us-east4:\n"
                                "        address: 10.150.0.10\n"
                                "models:\n"
                                "    housing:\n"
                                "        default: true\n"
                                "        endpoints:\n"
                                "            us-central1: '1234567890'\n"
                                "            us-east4: \"9876543210\"\n"
                                "    fraud-model:  # display name \"Fraud Model\" (added by discover)\n"
                                "        endpoints:\n"
                                "            us-east4: \"31\"\n"
                                "\n"
                                "# the end: nothing below\n")
    assert load_config(path).models["fraud-model"].endpoints == {"us-east4": "31"}


def test_guess_indent_keeps_the_operators_sequence_style():
    assert discover._guess_indent(REGIONS_YAML) == (2, 4, 2)
    assert discover._guess_indent("a:\n    b:\n    - 1\n") == (4, 2, 0)


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
