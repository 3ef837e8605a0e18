"""`discover`: the real gapic EndpointServiceClient (REST) against a local fake, listing and
grouping endpoints into a models: section. Writing it into regions.yaml:
test_discover_write.py; `validate --online` and the errors: test_discover_online.py.

Anonymous credentials throughout (real service-account credentials would make google-auth
call the internet): through the functions' `credentials=` seam, or for the CLI through
`--api-endpoint http://127.0.0.1:PORT` and VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS=1 (the `api`
and `anonymous` fixtures of tests/conftest.py).
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

from .fake_vertex_api import FakeVertexAPI, populate  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


ANON = AnonymousCredentials()


REGIONS = ["us-central1", "us-east4"]


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
