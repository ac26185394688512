"""Whether the process that made something is known to be dead: the liveness test of hfexport's cleanup.

A PID means something only on one host, within one boot and one PID namespace, and only until it is reused: a
process is *known* dead when it ran here (same host name, boot id and PID namespace as this process) and its PID no
longer runs, or now belongs to a process started at another time (``/proc/PID/stat``'s start time). Anything else is
unknown, and :mod:`hfexport.io.temporaries` leaves what such a process made in place.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["host_digest", "process_identity", "process_is_dead", "start_time", "writer_is_dead"]


@functools.lru_cache(maxsize=1)
def process_identity() -> dict[str, str | None]:
    """Where this process runs: host name, boot id and PID namespace (``None`` where the OS does not say)."""

    def read(path: str, link: bool = False) -> str | None:
        try:
            return os.readlink(path) if link else Path(path).read_text().strip()
        except OSError:
            return None

    return {
        "host": socket.gethostname(),
        "boot_id": read("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": read("/proc/self/ns/pid", link=True),
    }


def host_digest() -> str:
    """8 hex digits naming this host, boot and PID namespace (a PID means something only within all three)."""
    here = process_identity()
    text = "\0".join(str(here[key]) for key in ("host", "boot_id", "pid_namespace"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def writer_is_dead(marker: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the process that made a temporary is known to be dead, and why (or why that is not known)."""
    pid = marker["pid"]
    here = process_identity()
    for key, what in (("host", "host"), ("boot_id", "boot"), ("pid_namespace", "PID namespace")):
        if marker.get(key) != here[key]:
            return False, f"made by PID {pid} in another {what} ({marker.get(key)!r}), whose state is unknown here"
    return process_is_dead(pid, marker.get("start_time"))


def process_is_dead(pid: int, start: int | None) -> tuple[bool, str]:
    """Whether process ``pid`` of this host, started at ``start`` (``None`` or ``0``: unknown), has exited."""
    if not _pid_alive(pid):
        return True, f"PID {pid} has exited"
    now = start_time(pid)
    if start and now is not None and start != now:
        return True, f"PID {pid} has exited (that PID now belongs to another process)"
    return False, f"made by PID {pid}, which is still running"


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/PID/stat`` (after the command name), or ``None`` where there is none."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time (field 22 of ``/proc/PID/stat``, clock ticks since boot); ``None`` if unknown."""
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20 or not fields[19].isdigit():
        return None
    return int(fields[19])


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it has exited and only waits to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except OSError:
        return True  # cannot tell: assume it runs
    fields = _proc_stat(pid)
    return not (fields is not None and fields and fields[0] in ("Z", "X"))
