"""Reading regions.yaml: YAML (with limits), then the models and the rules; every problem is
reported at once, sorted by line."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import ValidationError

from .. import yamlsafe
from ..yamlsafe import Limits, YamlRefused
from .problems import KEY_MARK, ConfigError, Problem, dedupe, describe, error_loc, key_path
from .region_config import RegionConfig
from .rules import cross_reference_problems, openai_problems


def load_config(path: str | Path, limits: Limits = Limits()) -> RegionConfig:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([Problem(str(path), "", f"cannot read: {exc.strerror or exc}")]) from exc
    return parse_config_bytes(data, str(path), limits)


def parse_config_bytes(data: bytes, file: str = "regions.yaml", limits: Limits = Limits()) -> RegionConfig:
    try:
        text = yamlsafe.decode(data, limits)
    except YamlRefused as exc:
        raise ConfigError([Problem(file, "", exc.message)]) from exc
    return parse_config(text, file, limits)


def parse_config(text: str, file: str = "regions.yaml", limits: Limits = Limits()) -> RegionConfig:
    try:
        raw = yamlsafe.load(text, limits)
    except YamlRefused as exc:
        raise ConfigError([Problem(file, "", exc.message, exc.line)]) from exc
    if raw is None or (isinstance(raw, (dict, list, str)) and not raw):
        raise ConfigError([Problem(file, "", "the file is empty: expected project, regions and models")])
    if not isinstance(raw, dict):
        raise ConfigError([Problem(file, "", f"expected a mapping at the top, got {'a list' if isinstance(raw, list) else type(raw).__name__}")])

    found: list[tuple[tuple, str]] = []
    config: RegionConfig | None = None
    try:
        config = RegionConfig.model_validate(raw)
    except ValidationError as exc:
        found += [(error_loc(error), describe(error)) for error in exc.errors()]
    found += cross_reference_problems(raw) + openai_problems(raw)
    if found:
        line_of = yamlsafe.line_finder(text)  # the slow, line-numbered parse: only to report
        problems = [Problem(file, key_path(loc), message, line_of(tuple(p for p in loc if p != KEY_MARK)))
                    for loc, message in found]
        raise ConfigError(sorted(dedupe(problems), key=lambda p: (p.line or 0, _in_order(p.path))))
    assert config is not None
    return config


def _in_order(path: str) -> list:
    """A key path's sort key: list indices as numbers (regions[9] before regions[10])."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"\[([0-9]+)\]", path))]
