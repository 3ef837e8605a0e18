"""`discover --write`: the discovered models merged into an operator's regions.yaml, keeping
its comments, order and indentation; refused when the result would not validate.

Anonymous credentials throughout (real service-account credentials would make google-auth
call the internet): through the functions' `credentials=` seam, or for the CLI through
`--api-endpoint http://127.0.0.1:PORT` and VERTEX_GATEWAY_ANONYMOUS_CREDENTIALS=1 (the `api`
and `anonymous` fixtures of tests/conftest.py).
"""

from __future__ import annotations

import pytest

pytest.importorskip("google.cloud.aiplatform_v1")


from control_plane import discover  # noqa: E402
from control_plane.__main__ import main  # noqa: E402
from control_plane.config import load_config, parse_config  # noqa: E402

from .fake_vertex_api import populate  # noqa: E402


def run(*argv: str) -> int:
    return main(list(argv))


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
