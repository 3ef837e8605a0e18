"""Reading regions.yaml, the same way for `serve` at start, every reload and `validate`.

One path, so that `validate` exit 0 means `serve` loads the file: parse within the limits,
apply every rule, then build every region's Envoy resources. Whatever goes wrong on the
way is a ConfigError naming the file, never an exception escaping to the caller.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .config import ConfigError, Problem, RegionConfig, parse_config_bytes
from .text import first_line
from .yamlsafe import Limits

T = TypeVar("T")


@dataclass(frozen=True)
class Loaded:
    config: RegionConfig
    sha256: str  # of exactly the bytes that were parsed and validated


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:  # a missing file too: serve keeps its config and applies the file when it is back
        raise ConfigError([Problem(str(path), "", f"cannot read: {exc.strerror or exc}")]) from exc


def parse(data: bytes, path: Path, limits: Limits = Limits()) -> Loaded:
    """The rules, on the bytes read once (the version and the file hash describe these bytes)."""
    return Loaded(checked(str(path), "cannot check", lambda: parse_config_bytes(data, str(path), limits)),
                  hashlib.sha256(data).hexdigest())


def load(path: Path, limits: Limits = Limits()) -> Loaded:
    return parse(read_bytes(path), path, limits)


def checked(file: str, doing: str, step: Callable[[], T]) -> T:
    """step(), with any failure but a ConfigError turned into one (a bug or a bound the
    rules missed must reject the file, not stop the process)."""
    try:
        return step()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the operator, with the file's name
        raise ConfigError([Problem(file, "", f"{doing}: {type(exc).__name__}: {first_line(exc, 500)}")]) from exc

