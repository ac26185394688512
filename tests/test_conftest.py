"""The test session's own hygiene: what ``conftest.py`` creates outside ``tmp_path`` is removed.

Each test runs Python in a subprocess with ``TMPDIR`` set to a fresh directory, so that what the process leaves
behind can be listed (the real temporary directory is shared with other processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the scratch directory's lock is a POSIX flock")


def run_python(code: str, tmp: Path, **kwargs) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
    """``code`` in a new interpreter that imports ``conftest`` first, with ``TMPDIR=tmp``."""
    prelude = f"import os, sys, time\nsys.path.insert(0, {str(TESTS)!r})\nimport conftest\n"
    env = {**os.environ, "TMPDIR": str(tmp)}
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def finish(proc: subprocess.Popen[str]) -> str:
    """``proc``'s output, once it exited with 0."""
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def test_a_test_process_removes_its_scratch_directory_at_exit_and_a_forked_child_does_not(tmp_path: Path) -> None:
    code = """
    home = os.environ["HF_HOME"]
    assert os.path.isdir(home) and os.path.dirname(home) == str(conftest._SCRATCH)
    for name in ("HYPOTHESIS_STORAGE_DIRECTORY", "TORCHINDUCTOR_CACHE_DIR", "TIKTOKEN_CACHE_DIR"):
        assert os.environ[name].startswith(str(conftest._SCRATCH)), name
    child = os.fork()
    if child == 0:
        sys.exit(0)  # a normal exit: the inherited atexit handlers run in the child
    os.waitpid(child, 0)
    print(conftest._SCRATCH, os.path.isdir(home))
    """
    scratch, kept = finish(run_python(code, tmp_path)).split()
    assert Path(scratch).parent == tmp_path and Path(scratch).name.startswith("hfexport-tests-")
    assert kept == "True"  # the forked child's exit left its parent's directory alone
    assert list(tmp_path.iterdir()) == []  # and the process removed it at its own exit


def test_the_directory_of_a_killed_process_is_removed_at_the_next_start_never_a_live_one(tmp_path: Path) -> None:
    killed = run_python("import signal\nos.kill(os.getpid(), signal.SIGKILL)", tmp_path)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.iterdir()  # no atexit ran: left behind
    unrelated = [tmp_path / "hfexport-tests-hf-home-abc123", tmp_path / "hfexport-tests-99-nolock", tmp_path / "x"]
    for path in unrelated:
        path.mkdir()
    live = run_python("print(conftest._SCRATCH, flush=True)\nsys.stdin.readline()", tmp_path, stdin=subprocess.PIPE)
    assert live.stdout is not None and live.stdin is not None
    live_dir = Path(live.stdout.readline().strip())
    finish(run_python("pass", tmp_path))  # a third start, while the second one runs
    assert not left.exists()
    assert sorted(tmp_path.iterdir()) == sorted([live_dir, *unrelated])
    _, err = live.communicate("\n", timeout=120)
    assert live.returncode == 0, err
    assert sorted(tmp_path.iterdir()) == sorted(unrelated)


def test_a_pytest_session_leaves_nothing_in_the_temporary_or_the_working_directory(tmp_path: Path) -> None:
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    (tmp_path / "test_probe.py").write_text(
        textwrap.dedent(
            """
            import os
            from hypothesis import given, settings, strategies as st

            @settings(max_examples=5, database=None)
            @given(st.text())
            def test_probe(text):
                assert os.path.isdir(os.environ["HF_HOME"])
            """
        )
    )
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "conftest",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "base"),
            str(tmp_path / "test_probe.py"),
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []
