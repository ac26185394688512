"""Test-session setup: a local Hugging Face Hub that the real ``huggingface_hub`` client talks to.

The server starts and the environment is set at import time, before any test module imports
``huggingface_hub`` (which reads ``HF_ENDPOINT`` once, on its first import). Nothing ever reaches the
internet, and a developer's real cached token is never sent.

Every process that imports this file (the pytest process, each pytest-xdist worker) gets one scratch directory,
``<tmp>/hfexport-tests-<pid>-XXXXXXXX``, for what the libraries would otherwise write outside ``tmp_path``: the
Hugging Face cache (``HF_HOME``), Hypothesis' storage (instead of ``./.hypothesis``), torch inductor's and tiktoken's
caches (instead of ``<tmp>/torchinductor_<user>``, ``<tmp>/data-gym-cache``). It is removed when that process exits
(``atexit``; not by a forked child's exit), and, at the next start, when the process that made it died without
exiting (SIGKILL, OOM): a live process holds a lock on its ``.lock`` file.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so that `import hub_server` works from any test module

from hub_server import HubServer

HUB_TOKEN = "hf_test_token"
HUB_USER = "tester"

SCRATCH_PREFIX = "hfexport-tests-"


def _lock(path: Path, *, wait: bool) -> IO[str] | None:
    """An exclusive ``flock`` on ``path`` (held while the returned file is open; released when its process dies,
    however it dies), or ``None`` when another process holds it (or locks are not available: not POSIX)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        handle = open(path, "a")  # noqa: SIM115 - held open for the process's lifetime
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        handle.close()
        return None
    return handle


def _remove_abandoned_scratch_dirs() -> None:
    """Remove the scratch directories of test processes that died without their ``atexit`` (nobody holds the lock).

    Only ``hfexport-tests-<pid>-*`` directories of this user that hold a ``.lock`` file are candidates: a directory
    being created (no lock file yet) and anything else in the temporary directory are left alone.
    """
    if os.name != "posix":
        return
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = path.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or path.is_symlink() or path.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        lock = path / ".lock"
        if not lock.is_file():
            continue
        held = _lock(lock, wait=False)
        if held is not None:  # its process is gone
            shutil.rmtree(path, ignore_errors=True)
            held.close()


def _make_scratch_dir() -> Path:
    """This process's scratch directory, locked for its lifetime and removed at its exit."""
    _remove_abandoned_scratch_dirs()
    path = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    lock = _lock(path / ".lock-taking", wait=True)
    if lock is not None:
        (path / ".lock-taking").rename(path / ".lock")  # only once held: another start never sees it free
    _SCRATCH_LOCKS.append(lock)
    (path / "hf_home").mkdir()
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # a forked child inherits this handler; the directory is still its parent's
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)  # registered before hfexport's own handlers, so it runs after them (LIFO)
    return path


_SCRATCH_LOCKS: list[IO[str] | None] = []
_SCRATCH = _make_scratch_dir()
_HF_HOME = str(_SCRATCH / "hf_home")
_HUB = HubServer().start()

os.environ.update(
    {
        "HF_ENDPOINT": _HUB.url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # plain HTTP commits; this test Hub has no Xet storage
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": _HF_HOME,
        "HYPOTHESIS_STORAGE_DIRECTORY": str(_SCRATCH / "hypothesis"),  # not ./.hypothesis in the working directory
        "TORCHINDUCTOR_CACHE_DIR": str(_SCRATCH / "torchinductor"),
        "TIKTOKEN_CACHE_DIR": str(_SCRATCH / "tiktoken"),  # not <tmp>/data-gym-cache
        "HFEXPORT_CACHE": str(_SCRATCH / "hfexport_cache"),  # not ~/.cache/hfexport
        "HF_TOKEN": HUB_TOKEN,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ.pop("TRANSFORMERS_OFFLINE", None)
if "huggingface_hub" in sys.modules:  # imported early by a plugin: it read the old environment
    import huggingface_hub.constants as _constants

    _constants.ENDPOINT = _HUB.url
    _constants.HF_HUB_DISABLE_XET = True
    _constants.HF_HUB_OFFLINE = False


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """The session's local Hub, emptied (repositories, injected failures, request log) for each test."""
    _HUB.reset()
    yield _HUB
    _HUB.reset()


@pytest.fixture
def hub_token() -> str:
    """A token the local Hub accepts (it maps to the user :data:`HUB_USER`)."""
    return HUB_TOKEN
