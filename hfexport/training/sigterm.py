"""Preemption: on SIGTERM (how Slurm and Kubernetes stop a job) the export in progress gets a grace period.

:func:`install` (called by every ``HFExporter`` that writes, from the main thread only) puts :func:`_on_sigterm`
in front of the disposition SIGTERM had (the default, or the user's own handler), unless SIGTERM is ignored. On
SIGTERM every live background writer gets ``HFEXPORT_SIGTERM_GRACE_S`` seconds (default 20, inside the 30 s that
Slurm and Kubernetes wait before SIGKILL) to finish what it holds; past that, the waiting versions are dropped and
the running one is stopped, its unpublished temporary removed. stderr says what happened to each version, by step
and path. Then SIGTERM goes on as it would have without hfexport: to the handler that was there before (called),
or, with the default disposition, the process ends by SIGTERM. When another handler was installed over this one
and calls it (Lightning's signal connector does), that handler decides what happens next. :func:`uninstall`
restores the previous disposition once no exporter is open.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

from hfexport._util.worker import say
from hfexport.training import background

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_GRACE_S", "ENV_GRACE", "grace_s", "install", "uninstall"]

ENV_GRACE = "HFEXPORT_SIGTERM_GRACE_S"
DEFAULT_GRACE_S = 20.0

_lock = threading.Lock()
_previous: Any = None  # SIGTERM's disposition before install(); meaningful only while installed
_installed = False


def grace_s() -> float:
    """The grace period in seconds: ``HFEXPORT_SIGTERM_GRACE_S`` when set to a number >= 0, else 20."""
    raw = os.environ.get(ENV_GRACE, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_GRACE_S
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        logger.warning("Ignoring %s=%r (not a number of seconds >= 0); using %gs", ENV_GRACE, raw, DEFAULT_GRACE_S)
        return DEFAULT_GRACE_S
    return value


def install() -> None:
    """Handle SIGTERM in front of its current disposition; only from the main thread, and not when SIGTERM is
    ignored (``SIG_IGN``: whoever ignores it wants no preemption handling). Idempotent."""
    global _previous, _installed
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm or current == signal.SIG_IGN:
            return
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):  # not the main interpreter, or an unsupported platform
            return
        _previous, _installed = current, True


def uninstall() -> None:
    """Put SIGTERM's previous disposition back, if this handler is still the installed one and no writer holds
    work (main thread only)."""
    global _previous, _installed
    if not _installed or threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if background.live():
            return
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:  # else someone chained to us: leave theirs in place
            signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
            _previous, _installed = None, False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    grace = grace_s()
    for writer in background.live():
        try:
            writer.finish_within(grace, "SIGTERM")
        except Exception as exc:  # in a signal handler: report, never raise into the training loop
            say(f"hfexport: SIGTERM: could not finish the pending exports: {exc!r}")
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        return  # another handler installed over this one called it (e.g. Lightning's): it decides what follows
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    # The default disposition (or one set outside Python): end the process by SIGTERM, as without hfexport.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
