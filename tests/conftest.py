"""Test-session setup: a local Hugging Face Hub that the real ``huggingface_hub`` client talks to.

The server starts and the environment is set at import time, before any test module imports
``huggingface_hub`` (which reads ``HF_ENDPOINT`` once, on its first import). Nothing ever reaches the
internet, and a developer's real cached token is never sent.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so that `import hub_server` works from any test module

from hub_server import HubServer

HUB_TOKEN = "hf_test_token"
HUB_USER = "tester"

_HUB = HubServer().start()
_HF_HOME = tempfile.mkdtemp(prefix="hfexport-tests-hf-home-")

os.environ.update(
    {
        "HF_ENDPOINT": _HUB.url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # plain HTTP commits; this test Hub has no Xet storage
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": _HF_HOME,
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
