"""regions.yaml as a file: empty, malformed and hostile YAML, unreadable files, and how the
problems are reported (all at once, sorted, rendered as file:line: path: message).

Pure and fast: no network, no Envoy. Each config is written inline (to tmp_path) from a small
valid base that a test modifies; every rejection asserts the file, the key path, the meaningful
part of the message and, where the key exists in the file, its line (tests/config_problems.py).
"""

from __future__ import annotations

import pytest

from control_plane.config import ConfigError, Problem, load_config, parse_config

from .config_problems import expect, find, load, rejected, write
from .configs import BASE_YAML, base

# ---------------------------------------------------------------- empty / malformed files


@pytest.mark.parametrize("text", ["", "\n\n", "   \n", "# only comments\n# nothing else\n", "{}", "{}\n# x\n", "---\n"],
                         ids=["empty", "newlines", "spaces", "comments", "empty-map", "empty-map-comment", "doc-start"])
def test_empty_file(tmp_path, text):
    file, _, problems = rejected(tmp_path, text)
    assert len(problems) == 1
    problem = problems[0]
    assert problem.file == str(file) and problem.path == "" and problem.line is None
    assert "empty" in problem.message
    assert str(problem) == f"{file}: (top): {problem.message}"


@pytest.mark.parametrize("text, line, fragment", [
    ("project: p\nregions: {}\n  bad: value: here\n", 3, "invalid YAML"),
    ("project: p\nregions:\n  us: {address: 1\nmodels: {}\n", 4, "invalid YAML"),
    ("project: a: b\n", 1, "mapping values are not allowed"),
    ("project: p\n\tregions: {}\n", 2, "tab"),
    ("project: p\n---\nproject: q\n", 2, "invalid YAML"),
])
def test_invalid_yaml(tmp_path, text, line, fragment):
    expect(tmp_path, text, "", "invalid YAML", fragment, line=line, only=True)


@pytest.mark.parametrize("text, fragment", [
    ("- project: p\n- regions: {}\n", "got a list"),
    ("just a string\n", "expected a mapping"),
    ("42\n", "expected a mapping"),
])
def test_top_level_not_a_mapping(tmp_path, text, fragment):
    problem = expect(tmp_path, text, "", "expected a mapping", fragment, only=True)
    assert problem.line is None


def test_duplicate_top_level_key(tmp_path):
    text = BASE_YAML + "project: other-project\n"
    expect(tmp_path, text, "", "duplicate key", '"project"', line="project: other-project", only=True)


def test_duplicate_nested_key(tmp_path):
    text = BASE_YAML.replace("  us-east4:\n    address: 10.150.0.10\n",
                             "  us-east4:\n    address: 10.150.0.10\n    address: 10.150.0.11\n")
    expect(tmp_path, text, "", "duplicate key", '"address"', line="address: 10.150.0.11", only=True)


def test_duplicate_region(tmp_path):
    text = BASE_YAML.replace("models:\n", "  us-east4:\n    address: 10.0.0.3\nmodels:\n")
    expect(tmp_path, text, "", "duplicate key", '"us-east4"', line="us-east4:", nth=2, only=True)


# ---------------------------------------------------------------- hostile input


@pytest.mark.parametrize("text, fragment", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)),
     "aliases expand the document beyond"),
    ("project: " + "[" * 200 + "]" * 200 + "\n", "nesting deeper than 64 levels"),
    ("project: p\nproject: q\n", 'duplicate key "project"'),
])
def test_hostile_yaml_is_refused(tmp_path, text, fragment):
    expect(tmp_path, text, "", fragment, only=True)


def test_file_size_cap_and_raising_it(tmp_path):
    from control_plane.yamlsafe import Limits

    padded = BASE_YAML + "#" + "x" * 5_000_000 + "\n"
    path = write(tmp_path, padded)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "over the limit of 4,194,304" in str(info.value) and "--max-config-bytes" in str(info.value)
    assert load_config(path, Limits().scaled(8 * 1024 * 1024)).project == "my-project"


def test_yaml_1_2_booleans(tmp_path):
    """`no`, `on`, `off` are strings in YAML 1.2 (the fast and the line-numbered parser agree)."""
    data = base()
    data["regions"]["no"] = {"address": "10.0.0.7"}
    assert "no" in load(tmp_path, data).regions
    expect(tmp_path, BASE_YAML.replace("default: true", "default: on"), "models.housing.default",
           "expected true or false (got 'on')", line="default: on")


# ---------------------------------------------------------------- all problems at once


def test_several_problems_all_reported(tmp_path):
    text = """\
project: my-project
colour: blue
regions:
  us-central1:
    address: not an address
    failover: [us-east4, us-central1, asia-east1]
  us-east4:
    address: 10.150.0.10
    port: 99999
models:
  housing:
    endpoints:
      us-central1: "12ab"
      europe-west4: "555"
  churn:
    endpoints: {us-east4: "555"}
  "bad name":
    publisher_model: gemini
policy:
  timeout: soon
  num_retries: 42
  retry_on: [5xx, sometimes]
"""
    file, _, problems = rejected(tmp_path, text)
    expected = [
        ("colour", "unknown key", 2),
        ("regions.us-central1.address", "bad address 'not an address'", 5),
        ("regions.us-central1.failover[1]", "cannot fail over to itself", 6),
        ("regions.us-central1.failover[2]", "unknown region 'asia-east1'", 6),
        ("regions.us-east4.port", "must be at most 65535", 9),
        ("models.housing.endpoints.us-central1", "bad endpoint id '12ab'", 13),
        ("models.housing.endpoints.europe-west4", "unknown region 'europe-west4'", 14),
        ("models.churn.endpoints.us-east4", "also used by model 'housing'", 16),
        ("models", "no default model", 10),
        ("models.bad name", "bad model name", 17),
        ("models.bad name.publisher_model", "bad publisher model 'gemini'", 18),
        ("models.bad name.regions", "publisher model needs `regions:`", 17),
        ("policy.timeout", "bad duration 'soon'", 20),
        ("policy.num_retries", "must be at most 10", 21),
        ("policy.retry_on", "unknown retry_on 'sometimes'", 22),
    ]
    for path, fragment, line in expected:
        problem = find(problems, path, fragment)
        assert problem.file == str(file)
        assert problem.line == line, str(problem)
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    # no problem is reported twice
    assert len({(p.path, p.message) for p in problems}) == len(problems)


def test_parse_config_names_the_given_file():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE_YAML + "colour: blue\n", "/etc/gw/regions.yaml")
    (problem,) = info.value.problems
    assert problem == Problem("/etc/gw/regions.yaml", "colour", "unknown key", 16)
    assert str(problem) == "/etc/gw/regions.yaml:16: colour: unknown key"
    assert str(info.value) == "/etc/gw/regions.yaml:16: colour: unknown key"


def test_problem_rendering():
    assert str(Problem("r.yaml", "regions.us-east4.failover[0]", "boom", 7)) == "r.yaml:7: regions.us-east4.failover[0]: boom"
    assert str(Problem("r.yaml", "project", "boom")) == "r.yaml: project: boom"
    assert str(Problem("r.yaml", "", "boom", 3)) == "r.yaml:3: (top): boom"


def test_problems_are_sorted_by_line(tmp_path):
    text = BASE_YAML.replace("listener: {port: 8080}", "listener: {port: 0}").replace(
        "    failover: [us-central1]", "    failover: [nowhere]\n    port: 70000")
    _, _, problems = rejected(tmp_path, text)
    lines = [p.line or 0 for p in problems]
    assert lines == sorted(lines) and len(problems) == 3


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    (problem,) = info.value.problems
    assert problem.file == str(missing)
    assert "cannot read" in problem.message and "No such file" in problem.message
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_binary_file(tmp_path):
    path = tmp_path / "regions.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x80")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.file == str(path) and "cannot read" in problem.message
