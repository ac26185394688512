"""A killed run never leaves a partial version, and a full disk fails cleanly.

* An exporting process (async, every step, keep_last_n) is SIGKILLed at seeded random moments; after each kill
  every visible ``step_*`` directory is complete and ``latest`` designates a complete one; the next start removes
  the dead process's hidden temporaries.
* A 2 MB tmpfs (skipped where it cannot be mounted) is too small for the export: ``on_error="raise"`` raises an
  ExportWorkerError naming ENOSPC, ``"warn"`` lets training go on; nothing partial is visible either way.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import torch
from exportkit import assert_file_tensors, hidden_temporaries, step_dirs, tiny_gpt, weights_copy
from nanogpt import make_gpt
from safetensors.torch import load_file

from hfexport import ExportWorkerError, verify_directory
from hfexport.io.versions import read_latest, resolve_latest
from hfexport.training.exporter import HFExporter

WORKERS = Path(__file__).parent / "dist_workers.py"
REQUIRED = {"config.json", "generation_config.json", "README.md", "hfexport.json", "model.safetensors"}


def leftovers(root: Path) -> list[str]:
    """Hidden temporaries: unfinished writes (``.tmp-``) and half-removed rotations (``.old-``)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name))


def describe(root: Path, names: set[str]) -> dict[str, list[str]]:
    """What each leftover holds (for the assertion message)."""
    return {name: sorted(str(p.relative_to(root / name)) for p in (root / name).rglob("*")) for name in names}


def nothing_in(path: Path) -> bool:
    """An empty directory, or one holding only an empty marker: all a kill leaves in the instant between a
    temporary's mkdir and its marker's content (or between the marker's removal and the rmdir); cleanup leaves it
    (nothing proves it is hfexport's), and it holds no data."""
    if not path.is_dir() or path.is_symlink():
        return False
    return all(p.name == "hfexport-temporary.json" and p.stat().st_size == 0 for p in path.iterdir())


def assert_only_complete_versions(root: Path) -> None:
    for name in step_dirs(root):
        version = root / name
        assert {p.name for p in version.iterdir()} >= REQUIRED, f"{name} is missing files"
        report = verify_directory(version)
        assert report.ok, f"{name}: {report.problems}"
        assert load_file(str(version / "model.safetensors"))
    latest = read_latest(root)
    if latest is not None:
        assert verify_directory(resolve_latest(root)).ok


def wait_dead(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still alive after SIGKILL")


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_a_partial_version(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rng = random.Random(1234)
    zygote = subprocess.Popen(
        [sys.executable, str(WORKERS), "export_zygote", str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert zygote.stdin is not None and zygote.stdout is not None
    killed_with_leftovers = 0
    try:
        previous_leftovers: list[str] = []
        for _ in range(7):
            zygote.stdin.write("go\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            deadline = time.monotonic() + 60
            while not (tmp_path / f"started-{pid}").exists():
                assert time.monotonic() < deadline, "the export loop did not start"
                time.sleep(0.01)
            # The exporter of the new process removed what the killed one left (its pid is gone).
            kept = {name for name in set(previous_leftovers) & set(leftovers(root)) if not nothing_in(root / name)}
            assert not kept, describe(root, kept)
            time.sleep(rng.uniform(0.2, 1.5))
            os.kill(pid, signal.SIGKILL)
            wait_dead(pid)
            assert_only_complete_versions(root)
            previous_leftovers = leftovers(root)
            killed_with_leftovers += bool(previous_leftovers)
            # What an earlier kill left is gone, except an empty temporary (a kill between its mkdir and its marker
            # leaves no marker: the cleanup cannot prove it is hfexport's and leaves it, as checked above).
            foreign = [n for n in previous_leftovers if f"-{pid}-" not in n and not nothing_in(root / n)]
            assert not foreign, describe(root, set(foreign))
        assert step_dirs(root), "no version was ever written"
        assert read_latest(root) is not None
    finally:
        with contextlib.suppress(OSError):
            zygote.stdin.close()
        try:
            zygote.wait(timeout=30)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait()
    # Not an assertion on luck alone: most kills land mid-write with a ~100 ms write per step.
    assert killed_with_leftovers >= 1, "no kill interrupted a write; the test did not exercise anything"
    HFExporter(root)  # one more start: the last leftovers go too
    assert [name for name in leftovers(root) if not nothing_in(root / name)] == []


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    path.mkdir()
    try:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=20)


def big_gpt() -> torch.nn.Module:
    return make_gpt(0, vocab_size=4096, n_layer=1, n_embd=256, n_head=4, block_size=16)  # ~4.6 MB in float32


def test_full_disk_raises_enospc_and_leaves_nothing_partial(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "disk") as disk:
        root = disk / "exports"
        exporter = HFExporter(root, every_n_steps=1, dtype="float32", on_error="raise")
        exporter.maybe_export(tiny_gpt(0), 1)  # fits
        exporter.wait()
        exporter.maybe_export(big_gpt(), 2)  # does not fit
        with pytest.raises(ExportWorkerError, match=r"No space left on device|ENOSPC|Errno 28"):
            exporter.wait()
        exporter.close()
        assert step_dirs(root) == ["step_000001"]
        assert read_latest(root) == "step_000001" and verify_directory(resolve_latest(root)).ok
        assert leftovers(root) == [] and hidden_temporaries(root) == []


def test_full_disk_with_on_error_warn_training_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with tiny_tmpfs(tmp_path / "disk") as disk:
        root = disk / "exports"
        model = big_gpt()
        with HFExporter(root, every_n_steps=1, dtype="float32", on_error="warn") as exporter:
            for step in range(1, 4):  # every export fails; no call raises
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.01)
                exporter.maybe_export(model, step)
            exporter.wait()
        assert "No space left on device" in caplog.text
        assert step_dirs(root) == [] and read_latest(root) is None
        assert leftovers(root) == []


# --------------------------------------------------------------------------------- a real Ctrl-C (SIGINT)
SIGINT_EXPORT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from exportkit import tiny_gpt
from hfexport import export_hf

class CtrlC:  # a tokenizer whose saving is where the user presses Ctrl-C
    def save_pretrained(self, path):
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("SIGINT did not interrupt")  # not reached: the handler raises first

try:
    export_hf(tiny_gpt(0), 1, sys.argv[1], on_error=sys.argv[2], tokenizer=CtrlC())
except BaseException as exc:
    print(type(exc).__name__, repr(str(exc)))
else:
    print("returned")
print("training goes on")
"""


@pytest.mark.parametrize("on_error", ["raise", "warn"])
def test_sigint_during_a_synchronous_export_raises_keyboard_interrupt(tmp_path: Path, on_error: str) -> None:
    root = tmp_path / "root"
    script = SIGINT_EXPORT.format(tests=str(Path(__file__).parent))
    proc = subprocess.run([sys.executable, "-c", script, str(root), on_error], capture_output=True, text=True)
    assert proc.stdout.splitlines() == ["KeyboardInterrupt ''", "training goes on"], proc.stderr
    assert step_dirs(root) == [] and leftovers(root) == [] and read_latest(root) is None


SIGINT_CONVERT = """
import os, signal, sys
from hfexport import cli
from hfexport.io import directory as writer

real_publish = writer.publish_directory

def publish(tmp, target, **kwargs):  # Ctrl-C just before or just after the rename
    if sys.argv[1] == "before":
        os.kill(os.getpid(), signal.SIGINT)
    real_publish(tmp, target, **kwargs)
    if sys.argv[1] == "after":
        os.kill(os.getpid(), signal.SIGINT)

writer.publish_directory = publish
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigint_around_the_rename_is_reported_truthfully(tmp_path: Path, when: str) -> None:
    ckpt = tmp_path / "ckpt.pt"
    model = tiny_gpt(0)
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = tmp_path / "exports" / "hf"
    out.parent.mkdir()
    argv = ["convert", str(ckpt), "--output_dir", str(out), "--dtype", "float32", "--no_progress", "--quiet"]
    proc = subprocess.run([sys.executable, "-c", SIGINT_CONVERT, when, *argv], capture_output=True, text=True)
    assert proc.returncode == 130, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    if when == "before":
        assert errors == ["error: interrupted; nothing was published"]
        assert not out.exists()
    else:
        assert errors == [f"error: interrupted; {out} was published (complete) before the interrupt"]
        assert verify_directory(out).ok
    assert leftovers(out.parent) == []


# ------------------------------------------------------------------------------------------- preemption
SIGTERM_SCRIPT = """
import signal, sys, time
sys.path.insert(0, {tests!r})
from exportkit import SlowTokenizer, tiny_gpt
from hfexport import HFExporter

root, mode, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "user":  # the user's own handler: still called, after hfexport's grace period
    def mine(signum, frame):
        print("user handler ran", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, mine)
exporter = HFExporter(root, every_n_steps=1, dtype="float32", tokenizer=SlowTokenizer(delay))
exporter.maybe_export(tiny_gpt(0), 1)  # written in the background while training goes on
print("exporting", flush=True)
time.sleep(120)  # training; the job is preempted meanwhile
"""


def preempted(root: Path, mode: str, delay: float, grace: float) -> subprocess.CompletedProcess[str]:
    """Run the script and send it SIGTERM while its export is being written."""
    script = SIGTERM_SCRIPT.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "HFEXPORT_SIGTERM_GRACE_S": str(grace)}
    with subprocess.Popen(
        [sys.executable, "-c", script, str(root), mode, str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "exporting\n"
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigterm_finishes_the_export_in_progress_within_the_grace_period_then_ends_by_sigterm(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    proc = preempted(root, "default", delay=1.0, grace=60)
    target = root / "step_000001"
    assert f"hfexport: SIGTERM: finishing the export of step 1 to {target} (up to 60s)" in proc.stderr, proc.stderr
    assert f"hfexport: SIGTERM: finished the export of step 1 to {target}" in proc.stderr
    assert proc.returncode == -signal.SIGTERM  # then SIGTERM does what it did without hfexport
    assert verify_directory(target).ok and hidden_temporaries(root) == []
    assert_file_tensors(target, weights_copy(tiny_gpt(0)), torch.float32)


def test_sigterm_past_the_grace_period_abandons_the_export_says_which_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = preempted(root, "default", delay=4.0, grace=0.5)
    target = root / "step_000001"
    assert (
        f"hfexport: SIGTERM: abandoned the export of step 1 to {target}: not finished within 0.5s; nothing was "
        "published, no temporary left"
    ) in proc.stderr, proc.stderr
    assert proc.returncode == -signal.SIGTERM
    assert step_dirs(root) == [] and hidden_temporaries(root) == []


def test_sigterm_chains_to_the_users_own_handler(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = preempted(root, "user", delay=1.0, grace=60)
    assert proc.returncode == 0, proc.stderr
    assert "user handler ran" in proc.stdout  # called, after the export was finished
    assert "hfexport: SIGTERM: finished the export of step 1" in proc.stderr
    assert verify_directory(root / "step_000001").ok


def test_the_sigterm_handler_is_installed_from_the_main_thread_only_and_removed_at_close(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    exporter = HFExporter(tmp_path / "a", dtype="float32")
    assert signal.getsignal(signal.SIGTERM) is not before  # in front of the previous disposition
    exporter.close()
    assert signal.getsignal(signal.SIGTERM) is before  # put back
    made: list[HFExporter] = []
    worker = threading.Thread(target=lambda: made.append(HFExporter(tmp_path / "b", dtype="float32")))
    worker.start()
    worker.join()
    assert signal.getsignal(signal.SIGTERM) is before  # never from another thread
    made[0].close()
