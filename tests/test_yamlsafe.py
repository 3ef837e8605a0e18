"""The one-pass YAML loader (control_plane/yamlsafe.py) against PyYAML's own safe constructor with
the same YAML 1.2 core resolver: the same documents, and refusals with a line."""

from __future__ import annotations

import math

import pytest
import yaml
from yaml.cyaml import CParser

from control_plane import yamlsafe
from control_plane.yamlsafe import Limits, YamlRefused

from .configs import BASE_YAML, CONFIG


class Reference(CParser, yaml.constructor.SafeConstructor, yamlsafe._Core12Resolver):
    """PyYAML's safe loader (C parser and composer, Python constructor) with the core resolver."""

    def __init__(self, stream):
        CParser.__init__(self, stream)
        yaml.constructor.SafeConstructor.__init__(self)
        yamlsafe._Core12Resolver.__init__(self)

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node)
        return int(value[2:], 8) if value.startswith("0o") else int(value, 0) if value.startswith("0x") else int(value)


Reference.add_constructor("tag:yaml.org,2002:int", Reference.construct_yaml_int)

DOCUMENTS = [
    "", "\n", "# only a comment\n", "---\n", "{}", "[]", "42\n", "just text\n", "- 1\n- [2, 3]\n",
    "a: yes\nb: no\nc: on\nd: off\ne: true\nf: False\ng: TRUE\n",
    "a: null\nb: ~\nc:\nd: Null\n",
    "a: 0o17\nb: 0x1F\nc: 017\nd: +5\ne: -3\nf: 1_000\ng: -0\nh: 00\ni: 0o8\nj: 0b101\n",
    "a: 1.5\nb: .inf\nc: -.Inf\nd: +.INF\ne: 1e3\nf: 1.\ng: .5\nh: 1:30\ni: -.5e-3\nj: 1e\n",
    "a: '1'\nb: \"2\"\nc: !!str 3\nd: !!int '4'\ne: ! 5\nf: !!float 1\ng: !!bool true\nh: !!null ''\n",
    "a: 2001-12-14\nb: 12:30:00\n",
    "base: &b {x: 1, y: 2}\nd: {<<: *b, y: 3}\n",
    "a: &a {x: 1}\nb: &b {x: 2, z: 3}\nc: {<<: [*a, *b], w: 0}\n",
    "<<: {a: 1}\nb: 2\n",
    "a: &a [1, 2]\nb: *a\nc: [&q 3, *q]\nk: &A !!str 5\nl: *A\n",
    "a: {b: [1, {c: d}], e: [[], {}]}\n\"k\": v\n'k2': v\n1: a\nfalse: c\nnull: d\n",
    "a: |\n  line1\n  line2\nb: >\n  folded\n  text\nc: 'it''s'\nd: \"\\u00e9\\n\"\n",
    "a: !!map {x: 1}\nb: !!seq [1]\nc:\n- x\n- y\n",
    BASE_YAML, CONFIG,
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_the_same_document_as_pyyaml_builds(text):
    expected = yaml.load(text, Loader=Reference)  # noqa: S506 - a safe constructor
    got = yamlsafe.load(text)
    assert repr(got) == repr(expected)  # repr: nan == nan, and int 1 apart from float 1.0 and True


def test_an_alias_is_the_object_its_anchor_names():
    document = yamlsafe.load("a: &a {x: [1, 2]}\nb: *a\n")
    assert document["b"] is document["a"]
    assert math.isinf(yamlsafe.load("a: -.inf\n")["a"])


@pytest.mark.parametrize("text, line, message", [
    ("a: 1\nb: 2\na: 3\n", 3, 'invalid YAML: duplicate key "a" (first at line 1)'),
    ("a:\n  b: 1\n  b: 2\n", 3, 'invalid YAML: duplicate key "b" (first at line 2)'),
    ("a: 1\n---\nb: 2\n", 2, "invalid YAML: expected a single document in the stream but found another document"),
    ("a: *missing\n", 1, "invalid YAML: found undefined alias 'missing'"),
    ("a: &x 1\nb: &x 2\n", 2, "invalid YAML: found duplicate anchor &x"),
    ("? [1, 2]\n: x\n", 1, "invalid YAML: found unhashable key"),
    ("a: {<<: 5}\n", 1, "invalid YAML: expected a mapping or list of mappings for merging"),
    ("a: !!binary aGVsbG8=\n", 1, "invalid YAML: unsupported tag tag:yaml.org,2002:binary"),
    ("a: !!timestamp 2001-12-14\n", 1, "invalid YAML: unsupported tag tag:yaml.org,2002:timestamp"),
    ("a: !!set {x, y}\n", 1, "invalid YAML: unsupported tag tag:yaml.org,2002:set"),
    ("a: !custom x\n", 1, "invalid YAML: unsupported tag !custom"),
    ("a: !!int x\n", 1, "invalid YAML: bad int 'x'"),
    ("a: !!bool yes\n", 1, "invalid YAML: bad bool 'yes'"),
    ("a: [1, 2\n", 2, None),
])
def test_refused_with_its_line(text, line, message):
    with pytest.raises(YamlRefused) as info:
        yamlsafe.load(text)
    assert info.value.line == line
    if message:
        assert info.value.message == message


def test_limits_hold_for_anchors_merged_and_aliased():
    # Each level aliases the one before ten times: 10^6 nodes expanded from a few hundred bytes.
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6))
    with pytest.raises(YamlRefused, match="aliases expand the document beyond 500,000 nodes"):
        yamlsafe.load(bomb)
    level = yamlsafe.load(bomb, Limits(max_nodes=20_000_000))["g"]
    for _ in range(6):
        level = level[9]
    assert level == ["x"] * 10
    with pytest.raises(YamlRefused, match="nesting deeper than 64 levels"):
        yamlsafe.load("a: " + "[" * 65 + "]" * 65 + "\n")
