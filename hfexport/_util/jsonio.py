"""Strict JSON: what hfexport writes and what ``hfexport verify`` accepts.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, and reads them back; no other JSON parser accepts
them (JavaScript's ``JSON.parse``, Rust's ``serde_json`` behind ``tokenizers`` and the Hub, ``jq``...). Every JSON
file hfexport writes goes through :func:`dumps` (``allow_nan=False``), and every JSON file it checks through
:func:`loads`, which refuses those constants.
"""

from __future__ import annotations

import json
from typing import Any

from hfexport._util.validation import nonfinite_problem
from hfexport.errors import ConversionError

__all__ = ["dumps", "loads"]


def dumps(value: Any, *, name: str, **kwargs: Any) -> str:
    """``json.dumps(value, allow_nan=False, **kwargs)``, refusing NaN and infinities with a message naming the file.

    Args:
        value: What to write.
        name: The file it goes to (``config.json``), for the message.
        **kwargs: Passed to ``json.dumps`` (``indent``, ``sort_keys``, ...).

    Raises:
        ConversionError: ``value`` holds NaN or an infinity (strict JSON has no such number).
    """
    problem = nonfinite_problem(value)
    if problem is not None:
        raise ConversionError(
            f"{name} would hold {problem}: JSON has no NaN or infinity (no parser but Python's reads them). "
            "Fix the value where it comes from (an option, the checkpoint's config or the facts passed)."
        )
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError as exc:  # a non-finite float nonfinite_problem did not reach (a tuple, a default= result)
        raise ConversionError(f"{name} would not be strict JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (strict JSON has no NaN or infinity)")


def loads(text: str | bytes) -> Any:
    """``json.loads`` refusing ``NaN``, ``Infinity`` and ``-Infinity``.

    Raises:
        ValueError: not strict JSON (a ``json.JSONDecodeError``, or a ``ValueError`` for those constants).
        RecursionError: nested too deeply.
    """
    return json.loads(text, parse_constant=_refuse_constant)
