"""Request timeouts for ``huggingface_hub``: its shared HTTP client has none.

Below both users: the pushes (:mod:`hfexport.hub.retry` re-exports :func:`bounded_requests`) and the tokenizer's
download from the Hub (:mod:`hfexport.tokenizers.tokenizer`), which must not import the ``hub`` layer above it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from hfexport.errors import HubError

__all__ = ["bounded_requests"]


# -------------------------------------------------------------------------------------- request timeouts
# huggingface_hub sends every request through one shared HTTP client that has no timeout. While hfexport talks to
# the Hub, a request hook gives the requests that carry no timeout of their own (all of hfexport's, including LFS
# uploads made on the client's worker threads) the push's timeout; other requests are left as they are.
_ACTIVE_TIMEOUTS: list[float] = []
_ACTIVE_LOCK = threading.Lock()


def _timeout_hook(request: object) -> None:
    with _ACTIVE_LOCK:
        timeout = min(_ACTIVE_TIMEOUTS) if _ACTIVE_TIMEOUTS else None
    extensions = getattr(request, "extensions", None)
    if timeout is None or not isinstance(extensions, dict):
        return
    current = extensions.get("timeout") or {}
    if all(value is None for value in current.values()):
        extensions["timeout"] = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}


def _install_timeout_hook() -> None:
    from huggingface_hub.utils import get_session

    session = get_session()  # recreated after a fork or a new client factory: checked every time
    hooks = getattr(session, "event_hooks", None)
    if hooks is None:
        raise HubError(
            "This huggingface_hub version's HTTP client cannot be given timeouts; hfexport needs huggingface_hub "
            ">= 1.0 (pip install -U huggingface_hub)."
        )
    if _timeout_hook not in hooks.get("request", []):
        session.event_hooks = {**hooks, "request": [*hooks.get("request", []), _timeout_hook]}


@contextlib.contextmanager
def bounded_requests(timeout_s: float) -> Iterator[None]:
    """Give every ``huggingface_hub`` request made meanwhile (that has none) a timeout of ``timeout_s``.

    Args:
        timeout_s: Seconds for connecting, and for each read or write of the request.
    """
    _install_timeout_hook()
    with _ACTIVE_LOCK:
        _ACTIVE_TIMEOUTS.append(float(timeout_s))
    try:
        yield
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE_TIMEOUTS.remove(float(timeout_s))
