"""`discover --write FILE`: merge the models into an existing regions.yaml with ruamel's
round-trip loader, keeping the operator's comments, order and quoting."""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, parse_config
from .client import DiscoveryError
from .grouping import Group
from .messages import _first_line, _quote
from .render import _model_node, _quoted, _yaml


@dataclass
class MergeResult:
    text: str
    changed: bool
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_target(path: str | Path) -> tuple[str, Any]:
    """regions.yaml as text and round-trip data; the file need not be valid yet, only a mapping."""
    from ruamel.yaml.error import YAMLError

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DiscoveryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = _yaml().load(text)
    except YAMLError as exc:
        raise DiscoveryError(f"{path} is not valid YAML: {_first_line(exc)}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("regions"), dict) or not data["regions"]:
        raise DiscoveryError(f"{path} has no `regions:` mapping: define the regions (address of each) first")
    return text, data


def check_regions_defined(path: str | Path, data: Any, regions: list[str]) -> None:
    missing = [r for r in regions if r not in data["regions"]]
    if missing:
        raise DiscoveryError(f"{path} does not define region(s) {', '.join(missing)} under regions: (defined: "
                             f"{', '.join(map(str, data['regions']))}); add them (address, failover) first, or "
                             f"leave them out of --region")


def merge(path: str | Path, groups: list[Group]) -> MergeResult:
    """The groups merged into the file's models; comments, order and quoting kept; checked by parse_config."""
    from ruamel.yaml.comments import CommentedMap

    original, data = read_target(path)
    check_regions_defined(path, data, sorted({r for g in groups for r in g.endpoints}))
    result = MergeResult(original, False)
    models = data.get("models")
    fresh = not isinstance(models, dict) or not models  # no models yet: built apart, put in place at the end
    if fresh:
        models = CommentedMap()
    separate = not fresh and _blank_line_after(models, original)
    indent = _guess_indent(original)[0]
    owner: dict[str, str] = {}
    for name, model in models.items():
        for endpoint_id in (model.get("endpoints") or {}).values() if isinstance(model, dict) else ():
            owner.setdefault(str(endpoint_id), str(name))

    added: list[str] = []
    for group in groups:
        if not group.endpoints:
            continue
        ids = group.ids
        target = next((owner[i] for i in ids.values() if i in owner), None)
        if target is None and group.key in models:
            target = group.key
        if target is None:  # a new model: none of its ids is in use
            free = dict(ids)
            node = _model_node(group, free)
            _append(models, group.key, node, separate=separate)
            models.yaml_add_eol_comment(f"display name {_quote(group.display_name)} (added by discover)", group.key,
                                        column=indent + len(group.key) + 3)
            for endpoint_id in free.values():
                owner[endpoint_id] = group.key
            added.append(group.key)
            result.changes.append(f"added model {group.key} ({', '.join(f'{r}: {i}' for r, i in free.items())})")
            continue
        model = models[target]
        if not isinstance(model, dict) or model.get("publisher_model"):
            result.warnings.append(f"models.{target} is a publisher model (or not a mapping): not touched "
                                   f"(discovered {group.display_name!r})")
            continue
        endpoints = model.get("endpoints")
        if not isinstance(endpoints, dict):
            endpoints = CommentedMap()
            _append(model, "endpoints", endpoints)
        for region, endpoint_id in ids.items():
            if owner.get(endpoint_id, target) != target:
                result.warnings.append(f"models.{target}.endpoints.{region}: not set to {endpoint_id}, which "
                                       f"models.{owner[endpoint_id]} already uses")
                continue
            old = endpoints.get(region)
            if old is not None and str(old) == endpoint_id:
                continue
            if old is None:
                _append(endpoints, region, _quoted(endpoint_id))
                result.changes.append(f"models.{target}.endpoints.{region}: added {endpoint_id}")
            else:
                endpoints[region] = _quoted(endpoint_id)
                owner.pop(str(old), None)
                result.changes.append(f"models.{target}.endpoints.{region}: {old} -> {endpoint_id}")
            owner[endpoint_id] = target

    if added and not any(isinstance(m, dict) and m.get("default") is True for m in models.values()):
        models[added[0]].insert(0, "default", True)
        result.changes.append(f"models.{added[0]}: default: true (the file had no default model)")

    if not result.changes:
        return result
    if fresh:
        _put_models(data, models, original)
    out = io.StringIO()
    yaml = _yaml()
    yaml.indent(*_guess_indent(original))
    yaml.dump(data, out)
    result.text, result.changed = out.getvalue(), True
    try:
        parse_config(result.text, str(path))
    except ConfigError as exc:
        lines = "; ".join(str(p) for p in exc.problems)
        raise DiscoveryError(f"not writing {path}: the merged file would not be valid: {lines}") from exc
    return result


def _blank_line_after(models: Any, text: str) -> bool:
    """Whether the operator separates the entries of this mapping with blank lines (then a new one gets one too)."""
    lines = text.splitlines()
    for key in list(models.keys())[1:]:
        try:
            at = models.lc.key(key)[0] - 1  # 0-based line above the key
        except (AttributeError, KeyError, TypeError):
            return False
        while at >= 0 and lines[at].lstrip().startswith("#"):
            at -= 1
        if at >= 0 and not lines[at].strip():
            return True
    return False


def _put_models(data: Any, models: Any, original: str) -> None:
    """A new `models:` block in place of a missing or empty one, keeping the comments around it."""
    if "models" not in data:
        _append(data, "models", models, separate=_blank_line_after(data, original))
        return
    entry = data.ca.items.get("models")  # `models: {}   # fill me` and the lines after it
    token = entry[2] if entry and len(entry) > 2 else None
    if token is not None:
        entry[2] = None
    data["models"] = models
    if token is None:
        return
    head, _, rest = token.value.partition("\n")
    if head.strip():
        data.yaml_add_eol_comment(head.strip().removeprefix("#").strip(), "models")
    if rest:
        _attach_trailing(data, "models", rest)


def write_atomically(path: str | Path, text: str) -> None:
    """Replace the file in one step (serve watches it: it never sees half a file)."""
    path = Path(path)
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append(mapping: Any, key: str, value: Any, separate: bool = False) -> None:
    """mapping[key] = value at the end, moving the comment lines that trailed the old last entry after it.

    ruamel attaches the blank lines and comments that follow a block (e.g. `# policy section`
    before the next top-level key, or `# legacy` before the next model) to the deepest last
    entry of that block; a plain append would leave them above the new entry. `separate`:
    put a blank line above the new entry (models written with blank lines between them).
    """
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    trailing = None
    if len(mapping) and not mapping.fa.flow_style():
        trailing = _detach_trailing(mapping)
    mapping[key] = value
    if trailing:
        _attach_trailing(mapping, key, trailing)
    if separate:  # a blank line above the new key
        mapping.ca.items.setdefault(key, [None, None, None, None])[1] = [CommentToken("\n", CommentMark(0), None)]


def _attach_trailing(mapping: Any, key: str, text: str) -> None:
    """Comment lines (ruamel's token text) after the deepest last entry under mapping[key]."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.error import CommentMark
    from ruamel.yaml.tokens import CommentToken

    holder, slot_key = mapping, key
    while isinstance(holder[slot_key], (CommentedMap, CommentedSeq)) and len(holder[slot_key]) \
            and not holder[slot_key].fa.flow_style():
        holder = holder[slot_key]
        slot_key = list(holder.keys())[-1] if isinstance(holder, CommentedMap) else len(holder) - 1
    position = 2 if isinstance(holder, CommentedMap) else 0
    entry = holder.ca.items.setdefault(slot_key, [None, None, None, None])
    existing = entry[position].value if entry[position] is not None else "\n"
    entry[position] = CommentToken(existing + text, start_mark=CommentMark(0), end_mark=None)


def _detach_trailing(node: Any) -> str | None:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if not isinstance(node, (CommentedMap, CommentedSeq)) or not len(node) or node.fa.flow_style():
        return None
    last = list(node.keys())[-1] if isinstance(node, CommentedMap) else len(node) - 1
    found = _detach_trailing(node[last])
    if found:
        return found
    position = 2 if isinstance(node, CommentedMap) else 0
    entry = node.ca.items.get(last)
    if not entry or len(entry) <= position or entry[position] is None:
        return None
    token = entry[position]
    head, _, rest = token.value.partition("\n")
    if not rest:
        return None
    if head.strip():
        token.value = head + "\n"
    else:
        entry[position] = None
    return rest


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation as the operator wrote it, for ruamel's dumper."""
    mapping = sequence = offset = None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    for previous, line in zip(lines, lines[1:]):
        head = re.sub(r"\s+#.*$", "", previous).rstrip()
        if not head.endswith(":") or head.lstrip().startswith("- "):
            continue
        before, after = len(previous) - len(previous.lstrip()), len(line) - len(line.lstrip())
        if line.lstrip().startswith("- ") and sequence is None and after >= before:
            offset = after - before
            sequence = offset + 2
        elif after > before and mapping is None:
            mapping = after - before
    return mapping or 2, max(sequence or 2, (offset or 0) + 2), offset or 0
