"""Bounded, fast YAML for regions.yaml.

Every replica reads the same ConfigMap, so a hostile or broken file must cost little and
never take the process down: the size is capped before parsing, and the document is built in
one pass over the parser's events (libyaml, in C) that caps nesting depth and the number of
nodes the document would have with every alias expanded (a 1 KB "billion laughs" file is
refused in microseconds; an alias is the object its anchor names, never a copy). Scalars are
resolved with the YAML 1.2 core schema (`yes`/`no`/`on` stay strings, as with the round-trip
parser the error messages use); merge keys (`<<`) work; duplicate keys and other tags than
the core schema's are refused.

Line numbers for messages come from the round-trip parser (`ruamel.yaml`), which is ten
times slower: it runs only when there is something to report (`line_finder`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

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
        return _construct(text, limits)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlRefused(f"invalid YAML: {_problem(exc)}", mark.line + 1 if mark else None) from exc
    except yaml.reader.ReaderError as exc:  # a character YAML forbids: its position, not a line
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        raise YamlRefused(f"invalid YAML: {str(exc).splitlines()[0]}", line) from exc
    except yaml.YAMLError as exc:
        raise YamlRefused(f"invalid YAML: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def line_finder(text: str) -> Callable[[tuple], int | None]:
    """A function from a key path (as in a validation error's loc) to the 1-based line of the
    deepest key of it present in `text`. Call only on text that `load` accepted."""
    try:
        from ruamel.yaml import YAML  # only to report a problem: the start of every command is faster without it

        raw = YAML(typ="rt").load(text)
    except Exception:  # noqa: BLE001 - lines are a courtesy; the problems are reported anyway
        raw = None
    return lambda loc: _line_of(raw, loc)


def _bool(value: str) -> bool:
    """`true`/`false` in any case (YAML 1.2; an explicit `!!bool yes` is refused, not guessed)."""
    if value.lower() not in ("true", "false"):
        raise ValueError(value)
    return value.lower() == "true"


def _float(value: str) -> float:
    text = value.lower()
    sign = -1.0 if text.startswith("-") else 1.0
    if text.lstrip("+-") == ".inf":
        return sign * float("inf")
    return float("nan") if text == ".nan" else float(text)


def _int(value: str) -> int:
    if value.startswith("0o"):
        return int(value[2:], 8)
    return int(value, 0) if value.startswith("0x") else int(value)


_MERGE = "tag:yaml.org,2002:merge"
# What the core schema's scalars are built with (a ValueError: the value does not fit its tag).
_SCALARS = {
    "tag:yaml.org,2002:str": str,
    "tag:yaml.org,2002:null": lambda value: None,
    "tag:yaml.org,2002:bool": _bool,
    "tag:yaml.org,2002:int": _int,
    "tag:yaml.org,2002:float": _float,
}
_COLLECTIONS = {yaml.MappingStartEvent: "tag:yaml.org,2002:map", yaml.SequenceStartEvent: "tag:yaml.org,2002:seq"}


class _Frame:
    """An open collection: what is built so far, its anchor and expanded size, for a mapping the
    key waiting for its value (and each key's line, for duplicates), and merged mappings."""

    __slots__ = ("value", "anchor", "size", "key", "key_line", "lines", "merges", "is_map")

    def __init__(self, is_map: bool, anchor: str | None):
        self.is_map = is_map
        self.value: dict | list = {} if is_map else []
        self.anchor = anchor
        self.size = 1
        self.key: Any = _NO_KEY
        self.key_line: int | None = None
        self.lines: dict = {}
        self.merges: list[dict] = []


_NO_KEY = object()


def _construct(text: str, limits: Limits) -> Any:
    """One pass over libyaml's events: the document as plain dicts, lists and scalars, built as
    the events arrive, within the depth and expanded-size limits (an alias is the object its
    anchor names, counted at its full size). What PyYAML's safe loader with the YAML 1.2 core
    schema builds, merge keys and duplicate-key refusal included; other tags are refused."""
    resolve = _RESOLVER.resolve
    stack: list[_Frame] = []
    anchors: dict[str, tuple[Any, int]] = {}
    root: Any = None
    total = 0
    documents = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        kind = type(event)
        if kind is yaml.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":  # untagged, or the non-specific tag: resolved as PyYAML does
                tag = resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag == _MERGE and stack and stack[-1].is_map and stack[-1].key is _NO_KEY:
                value, size = _MERGE, 1
            else:
                build = _SCALARS.get(tag)
                if build is None:
                    raise YamlRefused(f"invalid YAML: unsupported tag {tag}", _line(event))
                try:
                    value, size = build(event.value), 1
                except ValueError as exc:
                    raise YamlRefused(f"invalid YAML: bad {tag.rpartition(':')[2]} {event.value!r}", _line(event)) from exc
            if event.anchor:
                _anchor(anchors, event.anchor, value, 1, event)
            total += 1
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.tag not in (None, "!", _COLLECTIONS[kind]):
                raise YamlRefused(f"invalid YAML: unsupported tag {event.tag}", _line(event))
            if len(stack) >= limits.max_depth:
                raise YamlRefused(f"nesting deeper than {limits.max_depth} levels", _line(event))
            stack.append(_Frame(kind is yaml.MappingStartEvent, event.anchor))
            total += 1
            if total > limits.max_nodes:
                raise YamlRefused(f"the document has more than {limits.max_nodes:,} nodes", _line(event))
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            frame = stack.pop()
            value, size = frame.value, frame.size
            if frame.merges:  # explicit keys win; of the merged, the first listed
                merged: dict = {}
                for mapping in reversed(frame.merges):
                    merged.update(mapping)
                merged.update(value)
                value = frame.value = merged
            if frame.anchor:
                _anchor(anchors, frame.anchor, value, size, event)
        elif kind is yaml.AliasEvent:
            if event.anchor not in anchors:
                raise YamlRefused(f"invalid YAML: found undefined alias {event.anchor!r}", _line(event))
            value, size = anchors[event.anchor]
            total += size
            if total > limits.max_nodes:
                raise YamlRefused(f"aliases expand the document beyond {limits.max_nodes:,} nodes "
                                  f"(at alias *{event.anchor}): refusing it", _line(event))
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise YamlRefused("invalid YAML: expected a single document in the stream but found another "
                                  "document", _line(event))
            continue
        else:
            continue
        if total > limits.max_nodes:
            raise YamlRefused(f"the document has more than {limits.max_nodes:,} nodes", _line(event))
        if not stack:
            root = value
            continue
        parent = stack[-1]
        parent.size += size
        if not parent.is_map:
            parent.value.append(value)
        elif parent.key is _NO_KEY:
            try:
                hash(value)
            except TypeError:
                raise YamlRefused("invalid YAML: found unhashable key", _line(event)) from None
            parent.key, parent.key_line = value, _line(event)
        else:
            key, parent.key = parent.key, _NO_KEY
            if key is _MERGE:
                if _MERGE in parent.lines:  # as other keys: once per mapping
                    raise YamlRefused(f"invalid YAML: duplicate merge key << (first at line {parent.lines[_MERGE]}): "
                                      "write `<<: [*a, *b]`", parent.key_line)
                parent.lines[_MERGE] = parent.key_line
                _merge(parent, value, event)
                continue
            if key in parent.lines:
                raise YamlRefused(f'invalid YAML: duplicate key "{key}" (first at line {parent.lines[key]})',
                                  parent.key_line)
            parent.lines[key] = parent.key_line
            parent.value[key] = value
    return root


def _anchor(anchors: dict, name: str, value: Any, size: int, event: yaml.Event) -> None:
    if name in anchors:  # as PyYAML's composer: an anchor is defined once
        raise YamlRefused(f"invalid YAML: found duplicate anchor &{name}", _line(event))
    anchors[name] = (value, size)


def _merge(frame: _Frame, value: Any, event: yaml.Event) -> None:
    """`<<: *anchor` or `<<: [*a, *b]`: mappings whose entries the mapping takes where it has none."""
    mappings = value if isinstance(value, list) else [value]
    if not all(isinstance(m, dict) for m in mappings):
        raise YamlRefused("invalid YAML: expected a mapping or list of mappings for merging", _line(event))
    frame.merges.extend(mappings)


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


_RESOLVER = _Core12Resolver()  # resolve() only: what the scalars are


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
