"""Exception text for one log line or one reported problem."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its repr when it has none), at most `limit` long."""
    text = str(exc)
    return text.splitlines()[0][:limit] if text.strip() else repr(exc)[:limit]
