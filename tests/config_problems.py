"""Writing a regions.yaml for a test and asserting how it is rejected: the file, the key path,
the meaningful part of the message and the line (tests/test_config_*.py, tests/test_clients.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from control_plane.config import ConfigError, Problem, RegionConfig, load_config


def to_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def set_key(*keys: str, value: Any) -> Callable[[dict], None]:
    """A mutation of a config dict: data[keys[0]]...[keys[-1]] = value, making the mappings on the way."""
    def mutate(data: dict) -> None:
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return mutate


def write(tmp_path: Path, content: str | dict, name: str = "regions.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else to_yaml(content))
    return path


def load(tmp_path: Path, content: str | dict) -> RegionConfig:
    return load_config(write(tmp_path, content))


def rejected(tmp_path: Path, content: str | dict) -> tuple[Path, str, list[Problem]]:
    """Write, load, expect ConfigError; returns (path, text written, problems)."""
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    assert problems, "ConfigError without problems"
    assert str(info.value) == "\n".join(str(p) for p in problems)
    return path, path.read_text(), problems


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing needle."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} not in:\n{text}"
    return hits[nth - 1]


def find(problems: list[Problem], path: str, *fragments: str) -> Problem:
    matches = [p for p in problems if p.path == path and all(f in p.message for f in fragments)]
    assert matches, f"no problem at {path!r} containing {fragments}; got:\n" + "\n".join(map(str, problems))
    return matches[0]


def expect(tmp_path: Path, content: str | dict, path: str, *fragments: str,
           line: str | int | None = None, nth: int = 1, only: bool = False) -> Problem:
    """Assert content is rejected with a problem at key `path` whose message holds `fragments`.

    `line` is either a line number or a needle whose (nth) line the problem must name.
    """
    file, text, problems = rejected(tmp_path, content)
    problem = find(problems, path, *fragments)
    assert problem.file == str(file)
    if line is not None:
        expected = line if isinstance(line, int) else line_of(text, line, nth)
        assert problem.line == expected, f"{problem} (expected line {expected})\n{text}"
        assert str(problem) == f"{file}:{expected}: {path or '(top)'}: {problem.message}"
    if only:
        assert len(problems) == 1, "\n".join(map(str, problems))
    return problem
