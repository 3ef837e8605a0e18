"""A problem found in regions.yaml (file, line, key path, message), and pydantic's validation
errors said in the project's words."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    file: str
    path: str  # key path, e.g. regions.us-east4.failover[0]
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '(top)'}: {self.message}"


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# pydantic's marker after a mapping key that is itself invalid: (..., key, "[key]").
KEY_MARK = "[key]"


def key_path(loc: tuple) -> str:
    out = ""
    for i, part in enumerate(loc):
        if part == KEY_MARK:
            continue
        if isinstance(part, int) and loc[i + 1:i + 2] != (KEY_MARK,):  # a list index, not a number as a key
            out += f"[{part}]"
        else:  # a key that is not text as written (null, true), not as Python says it
            out += ("." if out else "") + (part if isinstance(part, str) else as_written(part))
    return out


def error_loc(error: dict) -> tuple:
    """A validation error's key path, with a mapping key that is not text as itself (pydantic
    writes it as str(key): "None"), for its line and for key_path to write as YAML does."""
    loc = tuple(error["loc"])
    if error["type"] == "invalid_key" and loc:  # (..., str(key))
        return (*loc[:-1], error["input"])
    if loc[-1:] == (KEY_MARK,) and len(loc) > 1 and isinstance(loc[-2], str):  # (..., str(key), "[key]")
        return (*loc[:-2], error["input"], KEY_MARK)
    return loc


def describe(error: dict) -> str:
    """A validation error in the project's words (the library's are about Python types)."""
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f" (got {as_written(got)})"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    if kind == "string_type" and error["loc"][-1:] == (KEY_MARK,) or kind == "invalid_key":
        return f"a key must be text{shown}"
    words = _WORDS.get(kind)
    if words is None:
        return f"{error['msg']}{shown}"
    # pydantic's `expected` is already written out ("'connect' or 'http'"): not quoted again.
    return words.format(**{k: v if k == "expected" else as_written(v) for k, v in ctx.items()}) + shown


_WORDS = {
    "int_type": "expected a whole number", "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "dict_type": "expected a mapping (key: value lines)", "model_type": "expected a mapping (key: value lines)",
    "model_attributes_type": "expected a mapping (key: value lines)",
    "list_type": "expected a list",
    "greater_than_equal": "must be at least {ge}", "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}", "less_than": "must be less than {lt}",
    "string_too_short": "must not be empty", "too_short": "must not be empty",
    "literal_error": "must be one of {expected}",
}


def as_written(value: Any) -> str:
    """A value as the operator wrote it in YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, str) else str(value)


def dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for problem in problems:
        key = (problem.path, problem.message)
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out
