"""One validator per kind of value: the options of every entry point, and the numbers hfexport writes.

Configurations reach hfexport from Python, YAML, Hydra and the environment, where ``"false"``, ``"1"`` and ``True``
are easily passed for a bool, an int or a number of seconds. Nothing is coerced: a bool option takes only
``True``/``False``, an int option takes an ``int`` and never a ``bool``, a number takes an ``int`` or a ``float``
(never a ``bool`` or a string) that is finite and in its range. Each refusal names the option, the value received
and what is expected, in Lightning's words::

    Invalid value for every_n_steps=True: expected a positive int (not a bool).

Each validator comes in two forms: ``*_problem`` returns what is expected when the value does not fit (``None``
when it fits), for checkers that collect problems (``hfexport verify``, the config of a conversion plan);
``check_*`` raises an :class:`~hfexport.errors.OptionError` (a ``ValueError``), for the entry points.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, is_dataclass
from typing import Any, Literal, overload

from hfexport.errors import OptionError

__all__ = [
    "MAX_TIMEOUT_S",
    "Range",
    "check_bool",
    "check_choice",
    "check_config",
    "check_float",
    "check_int",
    "check_text",
    "float_problem",
    "int_problem",
    "invalid",
    "nonfinite_problem",
    "shown",
]

#: The longest timeout accepted (``hub_timeout_s``, ``--timeout_s``): one day. A longer wait is a hang, and an
#: infinite one overflows the clocks it is handed to.
MAX_TIMEOUT_S = 86400.0
_SHOWN_MAX = 80  # a value is shown in a message up to this many characters (never an unbounded repr)


def shown(value: Any) -> str:
    """``repr(value)``, cut to a bounded length (a message never renders an unbounded value)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def invalid(name: str, value: Any, expected: str) -> OptionError:
    """The error of an option: ``Invalid value for NAME=VALUE: expected EXPECTED.``"""
    return OptionError(f"Invalid value for {name}={shown(value)}: expected {expected}.")


def _or_none(expected: str) -> str:
    """``expected`` with ``, or None`` before the type note: ``a positive int, or None (not a str)``."""
    head, sep, tail = expected.partition(" (not ")
    return f"{head}, or None{sep}{tail}"


def _not_a(value: Any) -> str:
    """`` (not a str)``: the type received, said when it is the problem."""
    kind = type(value).__name__
    return f" (not {'an' if kind[:1] in 'aeiou' else 'a'} {kind})"


# --------------------------------------------------------------------------------------------------- bool
def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (never ``"false"``, ``"no"``, ``0`` or ``1``).

    Raises:
        OptionError: anything else.
    """
    if isinstance(value, bool):
        return value
    raise invalid(name, value, f"True or False{_not_a(value)}")


# ---------------------------------------------------------------------------------------------------- int
def _int_words(minimum: int) -> str:
    return {1: "a positive int", 0: "an int >= 0"}.get(minimum, f"an int >= {minimum}")


def int_problem(value: Any, *, minimum: int = 1) -> str | None:
    """What is expected when ``value`` is not an ``int`` >= ``minimum`` (a ``bool`` is not an int); else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{_int_words(minimum)}{_not_a(value)}"
    if value < minimum:
        return _int_words(minimum)
    return None


# Each check_* returns the value's own type, or that type | None when ``optional=True``.
@overload
def check_int(name: str, value: Any, *, minimum: int = ..., optional: Literal[False] = ...) -> int: ...
@overload
def check_int(name: str, value: Any, *, minimum: int = ..., optional: bool) -> int | None: ...
def check_int(name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` if it is an ``int`` >= ``minimum`` (``None`` too when ``optional``).

    Raises:
        OptionError: a bool, a float, a string, or an int below ``minimum``.
    """
    if value is None and optional:
        return None
    problem = int_problem(value, minimum=minimum)
    if problem is not None:
        raise invalid(name, value, _or_none(problem) if optional else problem)
    return value


# -------------------------------------------------------------------------------------------------- float
def _range_words(minimum: float | None, above: float | None, maximum: float | None) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {above:g}")
    if minimum is not None:
        parts.append(f">= {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    return " and ".join(parts)


def float_problem(
    value: Any, *, minimum: float | None = None, above: float | None = None, maximum: float | None = None
) -> str | None:
    """What is expected when ``value`` is not a finite number in range; ``None`` when it is.

    Args:
        value: The value (an ``int`` or ``float``; never a ``bool`` or a string).
        minimum: The smallest value allowed.
        above: The value must be strictly greater than this.
        maximum: The largest value allowed.
    """
    bounds = _range_words(minimum, above, maximum)
    what = "a finite number" + (f" {bounds}" if bounds else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return what + _not_a(value)
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        return what
    if not math.isfinite(number):
        return what
    if (
        (minimum is not None and number < minimum)
        or (above is not None and not number > above)
        or (maximum is not None and number > maximum)
    ):
        return what
    return None


@overload
def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = ...,
    above: float | None = ...,
    maximum: float | None = ...,
    optional: Literal[False] = ...,
) -> float: ...
@overload
def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = ...,
    above: float | None = ...,
    maximum: float | None = ...,
    optional: bool,
) -> float | None: ...
def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
    optional: bool = False,
) -> float | None:
    """``value`` as a ``float`` if it is a finite number in range (``None`` too when ``optional``).

    Raises:
        OptionError: a bool, a string, NaN, an infinity, or a number out of range.
    """
    if value is None and optional:
        return None
    problem = float_problem(value, minimum=minimum, above=above, maximum=maximum)
    if problem is not None:
        raise invalid(name, value, _or_none(problem) if optional else problem)
    return float(value)


@dataclass(frozen=True)
class Range:
    """The values a number written into a config may take: an ``int`` or a finite ``float``, within bounds.

    Attributes:
        integer: An ``int`` (never a ``bool``) rather than any finite number.
        minimum: The smallest value allowed.
        above: Values must be strictly greater than this.
        maximum: The largest value allowed.
    """

    integer: bool = False
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None

    def problem(self, value: Any) -> str | None:
        """What is expected when ``value`` is out of this range; ``None`` when it fits."""
        if self.integer:
            problem = int_problem(value, minimum=int(self.minimum or 0))
            if problem is None and self.maximum is not None and value > self.maximum:
                return f"an int <= {self.maximum:g}"
            return problem
        return float_problem(value, minimum=self.minimum, above=self.above, maximum=self.maximum)


def nonfinite_problem(value: Any, where: str = "", depth: int = 0) -> str | None:
    """Where ``value`` (a JSON-like tree) holds NaN or an infinity, which strict JSON cannot hold; else ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the value'} is {value!r}, not a finite number"
    if depth > 64:
        return None
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = nonfinite_problem(item, f"{where}.{key}" if where else str(key), depth + 1)
        if found:
            return found
    return None


# ------------------------------------------------------------------------------------------ choice, text
def check_choice(name: str, value: Any, choices: Collection[Any], *, optional: bool = False) -> Any:
    """``value`` if it is one of ``choices`` (``None`` too when ``optional``).

    Raises:
        OptionError: anything else.
    """
    if (value is None and optional) or (isinstance(value, str) and value in choices):
        return value
    listed = ", ".join(repr(c) for c in choices) + (", or None" if optional else "")
    kind = "" if isinstance(value, str) or value is None else _not_a(value)
    return _raise(invalid(name, value, f"one of {listed}{kind}"))


@overload
def check_text(name: str, value: Any, *, optional: Literal[False] = ..., one_line: bool = ...) -> str: ...
@overload
def check_text(name: str, value: Any, *, optional: bool, one_line: bool = ...) -> str | None: ...
def check_text(name: str, value: Any, *, optional: bool = False, one_line: bool = False) -> str | None:
    """``value`` if it is a non-empty ``str`` (``None`` too when ``optional``); with ``one_line``, printable text
    without line breaks or other control characters (it becomes a heading).

    Raises:
        OptionError: not a string, empty, or (``one_line``) holding a control character.
    """
    if value is None and optional:
        return None
    none = ", or None" if optional else ""
    if not isinstance(value, str) or not value.strip():
        kind = "" if isinstance(value, str) else _not_a(value)
        return _raise(invalid(name, value, f"a non-empty str{none}{kind}"))
    if one_line and not value.isprintable():
        return _raise(invalid(name, value, f"one line of printable text (no newline or other control character){none}"))
    return value


def check_config(name: str, value: Any) -> Any:
    """``value`` if facts can be read from it: ``None``, a mapping (a dict), a dataclass instance or an object with
    attributes (``argparse.Namespace``, a ``ModelArgs``); never a string, a number or a list.

    Raises:
        OptionError: anything else (it would be silently ignored).
    """
    if value is None or isinstance(value, Mapping):
        return value
    readable = (is_dataclass(value) and not isinstance(value, type)) or hasattr(value, "__dict__")
    if readable and not isinstance(value, (str, bytes, int, float, list, tuple)):
        return value
    return _raise(
        invalid(
            name,
            value,
            "a dict (or another mapping), a dataclass instance or an object with attributes (e.g. argparse.Namespace), "
            f"or None{_not_a(value)}",
        )
    )


def _raise(error: Exception) -> Any:
    raise error
