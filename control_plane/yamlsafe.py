"""Bounded, fast YAML for regions.yaml.

Every replica reads the same ConfigMap, so a hostile or broken file must cost little and
never take the process down: the size is capped before parsing, and a first pass over the
parser's events (libyaml, in C) caps nesting depth and the number of nodes the document
would have with every alias expanded (a 1 KB "billion laughs" file is refused in
microseconds). Only then is the document constructed, by libyaml again, with the YAML 1.2
core schema (`yes`/`no`/`on` stay strings, as with the round-trip parser the error
messages use) and duplicate keys refused.

Line numbers for messages come from the round-trip parser (`ruamel.yaml`), which is ten
times slower: it runs only when there is something to report (`line_finder`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.cyaml import CParser

MAX_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64
# A legitimate config is a few hundred thousand nodes at most (1,000 models x 40 regions is
# ~90,000); beyond this many nodes with aliases expanded, it is a bomb or a mistake.
MAX_NODES = 500_000


@dataclass(frozen=True)
class Limits:
    max_bytes: int = MAX_BYTES
    max_depth: int = MAX_DEPTH
    max_nodes: int = MAX_NODES

    def scaled(self, max_bytes: int) -> Limits:
        """Limits for a raised size cap: the node budget grows with it."""
        return Limits(max_bytes, self.max_depth, max(self.max_nodes, max_bytes // 8))


class YamlRefused(ValueError):
    """The text is not YAML we accept; `line` is 1-based where known."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message = message
        self.line = line


def decode(data: bytes, limits: Limits = Limits()) -> str:
    """The file's bytes as text, refused when over the size cap or not UTF-8."""
    if len(data) > limits.max_bytes:
        raise YamlRefused(f"the file is {len(data):,} bytes, over the limit of {limits.max_bytes:,} "
                          "(--max-config-bytes raises it)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlRefused(f"cannot read: not UTF-8 text ({exc.reason})") from exc


def load(text: str, limits: Limits = Limits()) -> Any:
    """Parse `text` into plain dicts, lists and scalars, within `limits`."""
    if len(text) > limits.max_bytes:  # characters <= bytes: a cheap first check
        raise YamlRefused(f"the text is over the limit of {limits.max_bytes:,} bytes")
    try:
        _check_shape(text, limits)
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlRefused(f"invalid YAML: {_problem(exc)}", mark.line + 1 if mark else None) from exc
    except yaml.YAMLError as exc:
        raise YamlRefused(f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    except RecursionError as exc:  # belt and braces: _check_shape bounds the depth first
        raise YamlRefused(f"nesting deeper than {limits.max_depth} levels") from exc


def line_finder(text: str) -> Callable[[tuple], int | None]:
    """A function from a key path (as in a validation error's loc) to the 1-based line of the
    deepest key of it present in `text`. Call only on text that `load` accepted."""
    try:
        from ruamel.yaml import YAML  # only to report a problem: the start of every command is faster without it

        raw = YAML(typ="rt").load(text)
    except Exception:  # noqa: BLE001 - lines are a courtesy; the problems are reported anyway
        raw = None
    return lambda loc: _line_of(raw, loc)


def _check_shape(text: str, limits: Limits) -> None:
    stack: list[list] = []  # open collections: [anchor, expanded size so far]
    anchors: dict[str, int] = {}
    total = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= limits.max_depth:
                raise YamlRefused(f"nesting deeper than {limits.max_depth} levels", _line(event))
            stack.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
            if anchor:
                anchors[anchor] = size
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor:
                anchors[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            size = anchors.get(event.anchor, 1)
            total += size  # counted here: a collection's own size is added when it closes
            if total > limits.max_nodes:
                raise YamlRefused(f"aliases expand the document beyond {limits.max_nodes:,} nodes "
                                  f"(at alias *{event.anchor}): refusing it", _line(event))
        else:
            continue
        if stack:
            stack[-1][1] += size
        if not isinstance(event, yaml.AliasEvent):
            total += 1
            if total > limits.max_nodes:
                raise YamlRefused(f"the document has more than {limits.max_nodes:,} nodes", _line(event))


def _line(event: yaml.Event) -> int | None:
    return event.start_mark.line + 1 if event.start_mark else None


def _problem(exc: yaml.MarkedYAMLError) -> str:
    if isinstance(exc, yaml.constructor.ConstructorError):  # "while constructing a mapping" says nothing
        return exc.problem or type(exc).__name__
    return " ".join(part for part in (exc.context, exc.problem) if part) or type(exc).__name__


class _Core12Resolver(yaml.resolver.BaseResolver):
    """YAML 1.2 core schema: what ruamel's round-trip loader resolves, so the fast and the
    line-numbered parse agree (`no` is a string, `0o17` an int, `1:30` a string)."""


for _tag, _pattern, _first in (
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
              r"|\.(?:nan|NaN|NAN))$", "-+0123456789."),
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("merge", r"^(?:<<)$", "<"),
):
    _Core12Resolver.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(_pattern), list(_first))


class _Constructor(yaml.constructor.SafeConstructor):
    def construct_mapping(self, node, deep=False):
        seen: dict[Any, yaml.Node] = {}
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = self.construct_object(key_node)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f'duplicate key "{key}" (first at line {seen[key].start_mark.line + 1})',
                            key_node.start_mark)
                    seen[key] = key_node
                except TypeError:
                    pass
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node)
        if value.startswith("0o"):
            return int(value[2:], 8)
        return int(value, 0) if value.startswith("0x") else int(value)


_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


class _Loader(CParser, _Constructor, _Core12Resolver):
    def __init__(self, stream):
        CParser.__init__(self, stream)
        _Constructor.__init__(self)
        _Core12Resolver.__init__(self)


def _line_of(raw: Any, loc: tuple) -> int | None:
    """Best-effort 1-based line of the deepest key in loc that exists in the YAML."""
    node, line = raw, None
    for part in loc:
        try:
            if isinstance(node, dict) and part in node:
                line = node.lc.key(part)[0] + 1
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                line = node.lc.item(part)[0] + 1
            else:
                break
            node = node[part]
        except (AttributeError, KeyError, TypeError):
            break
    return line
