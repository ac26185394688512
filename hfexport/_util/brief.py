"""Values from files rendered into a message or a model card, with bounded work and length.

A config read from a file (``params.json``, ``model_config.yaml``, a checkpoint's ``model_args``) may hold
anything: a megabyte-long string, a list nested thousands deep, a YAML alias bomb whose ``repr`` would take
minutes and gigabytes. Every such value that goes into an error message or the card goes through :func:`brief`:
at most :data:`MAX_CHARS` characters, built from a bounded number of elements (``reprlib``), never a full
``repr``/``str``.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["MAX_CHARS", "brief"]

#: The longest rendering of one value.
MAX_CHARS = 80

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_CHARS


def brief(value: Any, *, quote: bool = True, limit: int = MAX_CHARS) -> str:
    """``value`` for a message or a card: its ``repr`` (or, with ``quote=False``, a string as it is), cut to
    ``limit`` characters; containers show a few elements of their first levels (``[1, 2, 3, 4, ...]``)."""
    if isinstance(value, str) and not quote:
        text = value[: limit + 1]
    else:
        try:
            text = _REPR.repr(value)
        except ValueError:  # an int past Python's 4300-digit str limit
            text = f"<an int of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
