"""Small text helpers for messages and records: an error's first line, a shortened error, a UTC timestamp."""

from __future__ import annotations

import time

__all__ = ["first_line", "short", "utc_timestamp"]


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``str(error)`` (leading blank lines skipped), or the error's type name when its
    message is empty: ``"unexpected EOF"`` for a parser's multi-line message, ``"KeyError"`` for ``KeyError()``."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def short(error: BaseException, limit: int = 200) -> str:
    """``str(error)`` (its type name when empty), cut to ``limit`` characters with ``...`` when longer."""
    text = str(error) or type(error).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def utc_timestamp() -> str:
    """Now, in UTC, as ISO 8601 to the second: ``2026-01-31T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
