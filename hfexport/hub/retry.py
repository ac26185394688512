"""The Hub's retry policy and request timeouts, shared by every hfexport request to the Hub.

:func:`with_retries` runs an operation until it succeeds, retrying the failures that pass (connection errors,
timeouts, HTTP 408, 429 and 5xx, a commit whose verification failed) with exponential backoff and jitter, honouring
``Retry-After``; other errors fail at once. While it runs, :func:`bounded_requests` gives every ``huggingface_hub``
request without a timeout of its own the operation's timeout.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, TypeVar

from hfexport._util.hubhttp import bounded_requests
from hfexport._util.text import first_line
from hfexport.errors import HubError, PushVerificationError

if TYPE_CHECKING:
    from hfexport.hub.options import HubOptions

__all__ = ["MAX_RETRY_AFTER_S", "bounded_requests", "describe", "http_status", "is_transient", "with_retries"]

logger = logging.getLogger("hfexport.hub.push")  # one logger for everything about pushes
T = TypeVar("T")

# A Retry-After longer than this is shortened: the push is retried later rather than parked for hours.
MAX_RETRY_AFTER_S = 600.0


# ------------------------------------------------------------------------------------------- retry policy
def _transient_errors() -> tuple[type[BaseException], ...]:
    """Network-level errors worth retrying, for whichever HTTP stack this huggingface_hub version uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, json.JSONDecodeError]
    for module, names in (
        ("httpx2", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
        ("httpx", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        errors += [getattr(mod, name) for name in names if hasattr(mod, name)]
    return tuple(errors)


def http_status(error: BaseException | None) -> int | None:
    """The HTTP status of an error raised for an answer, or ``None`` (a network error, no error, ...)."""
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after_s(error: BaseException) -> float | None:
    """The ``Retry-After`` of an HTTP error, in seconds (a number or an HTTP date), if any."""
    headers = getattr(getattr(error, "response", None), "headers", None) or {}
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` may pass if tried again (the Hub or the network down, rate limits, a corrupt copy)."""
    if isinstance(error, PushVerificationError):
        return True  # what landed differs from what was sent: sending again is the fix
    status = http_status(error)
    if status is not None:
        return status >= 500 or status in (408, 429)
    return isinstance(error, _transient_errors())


def _retry_delay(error: BaseException, retry: int, options: HubOptions) -> float:
    """Exponential backoff with jitter for retry number ``retry`` (1-based), at least the ``Retry-After``."""
    delay = min(options.backoff_max_s, options.backoff_base_s * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)
    retry_after = _retry_after_s(error) if http_status(error) in (429, 503) else None
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


def describe(error: BaseException) -> str:
    """``"TypeName: first line of the message"``, for one-line logs."""
    line = first_line(error) if str(error).strip() else ""
    return f"{type(error).__name__}: {line}".rstrip(": ")


def with_retries(
    what: str,
    options: HubOptions,
    fn: Callable[[], T],
    *,
    error_cls: type[HubError] = HubError,
    hint: str = "the version stays on disk, journaled as not pushed: `hfexport push ROOT --repo_id ID --pending` "
    "(or a new run on the same export root) pushes it later",
) -> tuple[T, int]:
    """Run ``fn()`` under the retry policy of ``options``: ``(result, attempts)``, or raise ``error_cls``.

    Every request ``fn`` makes through ``huggingface_hub`` has ``options.timeout_s`` as its timeout.
    """
    attempt = 0
    rate_limited = 0
    while True:
        attempt += 1
        try:
            with bounded_requests(options.timeout_s):
                return fn(), attempt
        except Exception as error:
            if http_status(error) == 429:
                rate_limited += 1
                if rate_limited == 2:
                    logger.warning(
                        "The Hub keeps rate-limiting %s (HTTP 429): the export interval is faster than the Hub "
                        "allows commits to %s. Use hub_push='latest' (push only the newest waiting version) or a "
                        "larger export interval.",
                        what,
                        options.repo_id,
                    )
            if not is_transient(error):
                raise error_cls(f"{what} failed: {describe(error)} (not retried: the error is permanent).") from error
            if attempt > options.max_retries:
                raise error_cls(
                    f"{what} failed after {attempt} attempt(s): {describe(error)}. The Hub or the network "
                    f"may be down; {hint}."
                ) from error
            delay = _retry_delay(error, attempt, options)
            logger.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1f s",
                what,
                attempt,
                options.max_retries + 1,
                describe(error),
                delay,
            )
            time.sleep(delay)
