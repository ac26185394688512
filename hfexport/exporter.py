"""``export_hf`` and ``HFExporter``: Hugging Face exports from any PyTorch training loop.

``export_hf(model, step)`` writes one version and returns when it is on disk. ``HFExporter`` decides when to
export (every N steps, plus whatever you ask for), takes a snapshot of the weights in the export dtype and
hands it to a single background worker, so the training loop only pays for the copy. Each version is
published atomically as ``<root>/step_XXXXXX/``, then ``latest`` moves to it, then old versions are rotated
(``keep_last_n``), then it is queued for the Hub (``push_to_hub``).

Guarantees:
    * a version directory is complete or absent; ``latest`` only ever points at a complete version;
    * an export holds the weights of its step, even when training changes them right after the call;
    * at most one snapshot waits for the writer; with ``if_busy="wait"`` no requested version is lost;
    * a background failure is logged at once and raised from the next call (``on_error="raise"``);
    * ``KeyboardInterrupt`` and ``SystemExit`` go through untouched (the unpublished temporary removed first);
    * a script that ends without :meth:`HFExporter.close` still gets its pending versions: they are written at
      interpreter exit (said on stderr), and one that cannot be written is reported on stderr;
    * rotation deletes only versions this exporter created, never ``latest``, never one not pushed yet (queued,
      in flight or failed).

Steps going backwards (a run resumed from an earlier checkpoint, or a rollback): ``latest`` always moves to the
version just written, so it is the newest version of the *current* run, even when a version with a higher step
exists. Versions above the step just written (an abandoned future) are kept but are not ``latest``; a warning
says so once. The version just written is never rotated away; ``keep_last_n`` removes this run's versions in the
order they were written, oldest first.

Example:
    ```python
    exporter = HFExporter("hf_exports", every_n_steps=500, keep_last_n=3)
    for step in range(1, max_steps + 1):
        train_step()
        exporter.maybe_export(model, step)
    exporter.close()
    ```
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook registered before ours, so ours runs first
import contextlib
import logging
import operator
import os
import queue
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .convert import dtype_name, write_export
from .errors import ConversionError, ExportWorkerError, HFExportError
from .options import ExportOptions
from .snapshot import (
    Snapshot,
    broadcast_from_rank0,
    global_rank,
    is_sharded,
    plan_for_model,
    snapshot_outputs,
    take_snapshot,
)
from .versions import Version, list_versions, read_latest, remove_version, set_latest, version_name
from .writer import clean_stale_temporaries, note_interrupt

logger = logging.getLogger(__name__)

__all__ = ["ExportStats", "HFExporter", "export_hf"]


@dataclass
class ExportStats:
    """Timings of the most recent export, for logging.

    Attributes:
        step: Its training step.
        stall_s: Time the training loop spent in the call (snapshot and hand-off, waiting if busy).
        write_s: Time the writer spent writing and verifying it (``None`` until written).
        nbytes: Bytes of tensor data.
    """

    step: int
    stall_s: float
    write_s: float | None = None
    nbytes: int = 0


@dataclass
class _Job:
    step: int
    snapshot: Snapshot
    card: dict[str, Any]
    manifest: dict[str, Any]
    final: bool
    stats: ExportStats


class HFExporter:
    """Writes versioned Hugging Face exports of a model during training.

    Args:
        output_dir: The export root (``step_XXXXXX/`` directories and ``latest`` go there).
        every_n_steps: Export when ``step % every_n_steps == 0`` in :meth:`maybe_export`; ``None`` exports only
            when :meth:`export` is called.
        **options: The export options of :class:`~hfexport.options.ExportOptions` (``dtype="bfloat16"``,
            ``keep_last_n``, ``config``, ``tokenizer``, ``async_write``, ``if_busy``, ``on_error``, the Hub
            options ``push_to_hub``/``repo_id``/...).

    Call :meth:`maybe_export` on every rank under FSDP2 (gathering the weights is a collective); under DDP
    calling it on rank 0 only is fine. Only global rank 0 writes.

    Raises:
        ValueError: an invalid option.
        HubSetupError: ``push_to_hub=True`` and the repository cannot be used (checked here, before training).
    """

    def __init__(
        self, output_dir: str | os.PathLike[str] = "hf_exports", *, every_n_steps: int | None = None, **options: Any
    ) -> None:
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise ValueError(f"Invalid value for every_n_steps={every_n_steps!r}. Must be >= 1 or None.")
        unknown = sorted(set(options) - set(ExportOptions.names()))
        if unknown:
            raise TypeError(f"Unknown export option(s) {unknown}. Valid options: {ExportOptions.names()}.")
        self.root = Path(output_dir).expanduser()
        self.every_n_steps = every_n_steps
        self.options = ExportOptions(**options)
        self.is_writer = global_rank() == 0
        self.created: list[str] = []  # versions this exporter (or the run it resumes) wrote, in write order
        self.last_step: int | None = None
        self.last_stats: ExportStats | None = None
        self.metadata: dict[str, Any] = {}  # extra facts for every card/manifest (e.g. the source)
        self._error: BaseException | None = None
        self._error_what = ""  # "step N to PATH" of the failure in _error
        self._warned_ahead = False
        self._lock = threading.Lock()  # guards created, _unwritten, _error
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=1)
        self._worker: threading.Thread | None = None
        self._closed = False
        self._pusher: Any = None
        self._unwritten: dict[int, Path] = {}  # snapshots handed to the writer, not yet on disk (and pushed)
        self._owner_pid = os.getpid()  # a forked child inherits the queue, not the writer: it must not finish it
        if self.is_writer:
            self.root.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self.root)
            hub = self.options.hub_options()
            if hub is not None:
                from .hub import HubPusher

                self._pusher = HubPusher(hub)
                self._pusher.setup()
                self._pusher.resume(self.root)  # versions a previous run on this root left unpushed (journal)
        # Pending work is finished even if close() is forgotten (the final version must not be lost).
        _LIVE.add(self)
        _register_exit_hooks()

    # ----------------------------------------------------------------------------------------------- public
    @property
    def pusher(self) -> Any:
        """The :class:`~hfexport.hub.HubPusher` when pushing (rank 0), else ``None``."""
        return self._pusher

    def should_export(self, step: int) -> bool:
        """Whether :meth:`maybe_export` would export at ``step``."""
        step = check_step(step)
        return bool(self.every_n_steps) and step > 0 and step % self.every_n_steps == 0 and step != self.last_step

    def maybe_export(self, model: Any, step: int, **facts: Any) -> Path | None:
        """Export if ``step`` is due (``every_n_steps``); cheap otherwise.

        Args:
            model: The model (nanoGPT-style ``nn.Module``, wrapped or not, or a ``transformers`` model).
            step: The training step just completed.
            **facts: Extra facts for the model card and manifest (``epoch=``, ``loss=``, ...).

        Returns:
            The version directory being written, or ``None`` when not due.

        Raises:
            ExportWorkerError: a previous background write failed (``on_error="raise"``).
            ConversionError: ``step`` is not a whole number >= 0.
        """
        self.raise_if_failed()
        step = check_step(step)
        if not self.should_export(step):
            return None
        return self.export(model, step, **facts)

    def export(self, model: Any, step: int, *, final: bool = False, **facts: Any) -> Path | None:
        """Export ``model`` as the version of ``step`` now (in the background when ``async_write``).

        Args:
            model: The model to export.
            step: The training step (names the directory ``step_XXXXXX``).
            final: The last version of the run (always pushed, never coalesced away).
            **facts: Extra facts for the model card and manifest (``epoch=``, ``loss=``, ...).

        Returns:
            The version directory (on rank 0; ``None`` on other ranks, and when skipped as busy).

        Raises:
            ConversionError: ``step`` is not a whole number >= 0.
        """
        step = check_step(step)
        if self._closed:
            raise HFExportError("This HFExporter is closed; create a new one to export again.")
        self.raise_if_failed()
        if step == self.last_step:
            return self.root / version_name(step) if self.is_writer else None
        start = time.perf_counter()
        o = self.options
        busy = self.is_writer and o.async_write and self._queue.full()
        plan = plan_for_model(
            model,
            config=o.config,
            activation=o.activation,
            vocab_size=o.vocab_size,
            untie_embeddings=o.untie_embeddings,
        )
        if o.if_busy == "skip" and is_sharded(plan):
            # Every rank gathers the shards: they skip together or not at all (else the others hang in the gather).
            busy = broadcast_from_rank0(busy)
        if busy:
            if o.if_busy == "skip":
                logger.info("Skipped the export of step %d: the previous one is still waiting (if_busy='skip')", step)
                return None
            logger.info("Export of step %d waits for the previous one to be written (if_busy='wait')", step)
        if self.is_writer and o.async_write:
            self._wait_for_slot()
        snapshot = take_snapshot(plan, o.torch_dtype)  # every rank takes part (FSDP2 gathers)
        self.last_step = step
        if not self.is_writer:
            return None
        facts = {k: _plain(v) for k, v in facts.items() if v is not None}
        card = {"model_name": o.model_name, "step": step, **self.metadata, **facts}
        if o.push_to_hub:
            card.update(repo_id=o.repo_id, version=version_name(step))
        manifest = {"step": step, **self.metadata, **facts}
        stats = ExportStats(step, 0.0, nbytes=snapshot.nbytes)
        job = _Job(step, snapshot, card, manifest, final, stats)
        # Claimed now, not when written: a Lightning checkpoint saved while this version is still being written
        # must list it, or the resumed run would treat it as foreign and never rotate it (keep_last_n).
        with self._lock:
            if version_name(step) not in self.created:
                self.created.append(version_name(step))
            if o.async_write:
                self._unwritten[step] = self.root / version_name(step)
        if o.async_write:
            self._ensure_worker()
            self._queue.put(job)
            stats.stall_s = time.perf_counter() - start
        else:
            self._write(job)
            stats.stall_s = time.perf_counter() - start
            self.raise_if_failed()
        self.last_stats = stats
        return self.root / version_name(step)

    def wait(self) -> None:
        """Block until every queued version is written (not pushed). Raises a background failure."""
        if self._worker is not None:
            self._queue.join()
        self.raise_if_failed()

    def close(self) -> None:
        """Wait for pending writes and pushes; re-raise a background failure. Idempotent."""
        if self._closed:
            return
        try:
            if self._worker is not None:
                self._queue.join()
                self._queue.put(None)
                self._worker.join()
                self._worker = None
            if self._pusher is not None:
                self._pusher.close()
                self._rotate()  # versions kept only until their push succeeded may go now
        finally:
            self._closed = True
            _LIVE.discard(self)
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the pending background failure (``on_error="raise"``) and the Hub's (``on_push_error="raise"``)."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None and not isinstance(error, Exception):
            raise error  # a KeyboardInterrupt/SystemExit in the writer thread: delivered as itself
        if error is not None and self.options.on_error == "raise":
            raise ExportWorkerError(f"A background export failed: {error}") from error
        if self._pusher is not None:
            self._pusher.check()

    def versions(self) -> list[Version]:
        """The complete versions in the export root, oldest first."""
        return list_versions(self.root)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the last exported step, the versions created, pending pushes."""
        pending: list[list[Any]] = []
        if self._pusher is not None:
            # Versions still being written count too: a checkpoint taken now must not forget their push.
            with self._lock:
                unwritten = dict(self._unwritten)
            known = {(step, str(path)) for step, path in self._pusher.pending()}
            known |= {(step, str(path)) for step, path in unwritten.items()}
            pending = [[step, path] for step, path in sorted(known)]
        with self._lock:
            created = list(self.created)
        return {"last_step": self.last_step, "created": created, "pending_pushes": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; re-queues the Hub pushes the previous run had not finished."""
        self.last_step = state.get("last_step")
        existing = {v.name for v in self.versions()}
        with self._lock:
            self.created = [name for name in state.get("created", []) if name in existing]
        if self._pusher is not None:
            for step, path in state.get("pending_pushes", []):
                self._pusher.resubmit(Path(path), step=int(step))  # unless the journal says it was pushed since

    def __enter__(self) -> HFExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------- internal
    def _wait_for_slot(self) -> None:
        """Block while a snapshot already waits (at most one waits; the worker holds the other)."""
        while self._queue.full():
            time.sleep(0.005)
            self.raise_if_failed()

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name="hfexport-writer", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._write(job)
            finally:
                self._queue.task_done()

    def _finish_at_exit(self) -> None:
        """At interpreter exit: write what is still pending (in this thread if the worker is gone), and report on
        stderr what could not be written (a script may end without ``close()``, and logging may be unconfigured)."""
        if self._closed or not self.is_writer or os.getpid() != self._owner_pid:
            return
        pending = self._queue.unfinished_tasks
        if pending:
            _say(
                f"hfexport: finishing {pending} pending export{'s' if pending > 1 else ''} before exit "
                "(call exporter.close() to do this explicitly)"
            )
            worker = self._worker
            if worker is not None and worker.is_alive():
                self._queue.join()
            else:
                while True:
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    try:
                        if job is not None:
                            self._write(job)
                    finally:
                        self._queue.task_done()
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            _say(f"hfexport: error: the export of {self._error_what} could not be written: {error}")

    def _write(self, job: _Job) -> None:
        name = version_name(job.step)
        target = self.root / name
        start = time.perf_counter()
        published = False
        try:
            if target.exists():
                logger.warning("%s already exists; replacing it with this run's export of step %d", target, job.step)
            o = self.options
            write_export(
                job.snapshot.plan,
                target,
                dtype=o.torch_dtype,
                tensors=snapshot_outputs(job.snapshot, allow_nonfinite=o.allow_nonfinite),
                card_facts=job.card,
                manifest_facts={**job.manifest, "dtype": dtype_name(o.torch_dtype)},
                tokenizer=o.tokenizer_source,
                max_shard_size=o.max_shard_size,
                force=True,
                allow_nonfinite=o.allow_nonfinite,
                progress=False,
            )
            published = True
            job.snapshot.tensors.clear()  # free the host copy now, not when the job object dies
            self._after_publish(job.step)
            job.stats.write_s = time.perf_counter() - start
            logger.info("Exported step %d to %s in %.2fs", job.step, target, job.stats.write_s)
            if self._pusher is not None:
                self._pusher.submit(target, step=job.step, final=job.final)
            with self._lock:
                self._unwritten.pop(job.step, None)
        except BaseException as exc:
            with self._lock:
                self._unwritten.pop(job.step, None)
                if name in self.created and not target.is_dir():
                    self.created.remove(name)  # claimed when queued; nothing was published
            job.snapshot.tensors.clear()
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: the user's, not a failed export
                if published:
                    note_interrupt(exc, target, published=True)
                    what = f"after {target} was published (`latest` and rotation may not have caught up)"
                else:
                    what = "before it was published; nothing of it is left"
                logger.warning("Export of step %d interrupted (%s) %s", job.step, type(exc).__name__, what)
                if not self.options.async_write:
                    raise
            else:
                logger.error("Export of step %d to %s failed: %s", job.step, target, exc)
            with self._lock:
                self._error = exc
                self._error_what = f"step {job.step} to {target}"

    def _after_publish(self, step: int) -> None:
        """Once ``step`` is on disk: it becomes ``latest`` and this run's newest version, then rotation runs."""
        name = version_name(step)
        with self._lock:
            if name in self.created:
                self.created.remove(name)
            self.created.append(name)  # write order: what rotation removes first
        set_latest(self.root, name)
        ahead = [v.name for v in self.versions() if v.step > step]
        if ahead and not self._warned_ahead:
            self._warned_ahead = True
            logger.warning(
                "%s: %s hold(s) steps above %d, the step just written: training went back (resumed from an earlier "
                "checkpoint?). They are kept, but `latest` follows the current run and points at %s. Delete them "
                "by hand if that future is abandoned.",
                self.root,
                ", ".join(ahead),
                step,
                name,
            )
        self._rotate(keep_name=name)

    def _rotate(self, keep_name: str | None = None) -> None:
        """Remove this run's oldest versions (write order) beyond ``keep_last_n``; never ``keep_name`` (the version
        just written), ``latest``, a version still being written, or one whose Hub push is pending."""
        keep = self.options.keep_last_n
        if keep is None:
            return
        latest = read_latest(self.root)
        with self._lock:
            unwritten = {version_name(step) for step in self._unwritten} - {keep_name}
            mine = [n for n in self.created if n not in unwritten and (self.root / n).is_dir()]
        kept_for_hub = []
        for name in mine[: max(0, len(mine) - keep)]:  # older (in write order) than the newest keep_last_n
            if name in (keep_name, latest):
                continue
            path = self.root / name
            if self._pusher is not None and self._pusher.is_pending(path):
                kept_for_hub.append(name)  # not pushed yet (queued, in flight or failed): never deleted
                continue
            remove_version(Version(_step_of(name), path))
            with self._lock:
                if name in self.created:
                    self.created.remove(name)
            logger.info("Removed %s (keep_last_n=%d)", path, keep)
        if kept_for_hub:
            logger.info(
                "Keeping %d version(s) past keep_last_n=%d until their Hub push succeeds: %s",
                len(kept_for_hub),
                keep,
                ", ".join(kept_for_hub),
            )


def _step_of(name: str) -> int:
    return int(name.split("_", 1)[1])


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def check_step(step: Any) -> int:
    """``step`` as an ``int`` (an integral float or 0-d integer tensor is accepted).

    Raises:
        ConversionError: not a whole number >= 0 (``2.5``, ``True``, ``"10"``, ``-1``).
    """
    value: int | None = None
    if not isinstance(step, bool):
        try:
            value = operator.index(step)
        except TypeError:
            if isinstance(step, float) and step.is_integer():
                value = int(step)
    if value is None or value < 0:
        raise ConversionError(
            f"Invalid step {step!r}: the step must be a whole number >= 0 (it names the version directory "
            "step_XXXXXX). Pass the optimizer step as an int, e.g. int(step) or trainer.global_step."
        )
    return value


def _say(line: str) -> None:
    """One line on stderr (at exit, where logging may be unconfigured or already shut down)."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed
        print(line, file=sys.stderr, flush=True)


# Exporters that may hold pending writes; finished at interpreter exit if close() was never called.
_LIVE: weakref.WeakSet[HFExporter] = weakref.WeakSet()
_hooks_lock = threading.Lock()
_hooks_registered = False


def _register_exit_hooks() -> None:
    """Register :func:`_finish_all_at_exit` twice: as a threading exit hook, which runs before
    ``concurrent.futures`` refuses new work and before non-daemon threads are joined (the writer still runs
    normally then), and as an ``atexit`` hook for what a non-daemon thread queued after that."""
    global _hooks_registered
    with _hooks_lock:
        if _hooks_registered:
            return
        _hooks_registered = True
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9; hooks run last-registered first
    if register is not None:
        with contextlib.suppress(RuntimeError):  # the interpreter is already shutting down
            register(_finish_all_at_exit)
    atexit.register(_finish_all_at_exit)


def _finish_all_at_exit() -> None:
    for exporter in list(_LIVE):
        try:
            exporter._finish_at_exit()
        except KeyboardInterrupt:
            _say(f"hfexport: interrupted at exit; pending exports to {exporter.root} were not written")
            return
        except Exception as exc:  # at exit: report, never raise into the interpreter's shutdown
            _say(f"hfexport: error: could not finish the pending exports to {exporter.root}: {exc!r}")


def export_hf(model: Any, step: int, output_dir: str | os.PathLike[str] = "hf_exports", **options: Any) -> Path:
    """Export ``model`` as ``<output_dir>/step_XXXXXX`` now; returns when it is written (and pushed).

    Args:
        model: A nanoGPT-style ``nn.Module`` (wrapped or not) or a ``transformers`` model.
        step: The training step (names the version).
        output_dir: The export root.
        **options: The export options of :class:`~hfexport.options.ExportOptions` (``dtype="bfloat16"``, ...).

    Returns:
        The version directory (on rank 0; the would-be path on other ranks).

    Raises:
        ConversionError: ``step`` is not a whole number >= 0.

    Example:
        >>> export_hf(model, 1000, "hf_exports", dtype="float32")  # doctest: +SKIP
        PosixPath('hf_exports/step_001000')
    """
    step = check_step(step)
    epoch = options.pop("epoch", None)
    loss = options.pop("loss", None)
    options["async_write"] = False
    with HFExporter(output_dir, **options) as exporter:
        path = exporter.export(model, step, final=True, epoch=epoch, loss=loss)
    return path if path is not None else Path(output_dir) / version_name(step)
