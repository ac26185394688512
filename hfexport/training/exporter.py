"""``export_hf`` and ``HFExporter``: Hugging Face exports from any PyTorch training loop.

``export_hf(model, step)`` writes one version and returns when it is on disk. ``HFExporter`` decides when to
export (every N steps, plus whatever you ask for), takes a snapshot of the weights in the export dtype and
hands it to a single background worker, so the training loop only pays for the copy. Each version is
published atomically as ``<root>/step_XXXXXX/``, then ``latest`` moves to it, then old versions are rotated
(``keep_last_n``), then it is queued for the Hub (``push_to_hub``).

``HFExporter`` only decides (when, skip or wait, the FSDP busy broadcast) and hands off: the writing to a
:class:`~hfexport.training.background.BackgroundWriter`, the versions to a :class:`~hfexport.io.versions.VersionStore`
(publishing, ``latest``, rotation), the pushes to a :class:`~hfexport.hub.push.HubPusher`.

What it guarantees (a version complete or absent, ``latest`` only on a complete one, the weights of the step
asked for, no version lost with ``if_busy="wait"``, Ctrl-C let through, pending versions written at exit, steps
going backwards, rotation of this run's pushed versions only) is in README's *What an export looks like* and
*Guarantees*.

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

import logging
import operator
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from hfexport._util.validation import check_int
from hfexport.convert import WriteResult, dtype_name, export_tokenizer, output_tensors, write_export
from hfexport.errors import ConversionError, ExportWorkerError, HFExportError
from hfexport.families import ConversionPlan
from hfexport.hub.journal import PushJournal
from hfexport.hub.push import HubPusher
from hfexport.io.directory import parse_size
from hfexport.io.layout import plan_layout
from hfexport.io.outputpath import check_export_root
from hfexport.io.publish import note_interrupt
from hfexport.io.safetensors import OutputTensor
from hfexport.io.versions import Version, VersionStore, list_versions, version_name
from hfexport.sources import scalar_value
from hfexport.training import sigterm
from hfexport.training.background import BackgroundWriter
from hfexport.training.coordinator import (
    ENV_MODE,
    Coordinator,
    RankZeroWeights,
    new_coordinator,
    write_mode,
    write_part,
)
from hfexport.training.options import ExportOptions, document_options, option_values
from hfexport.training.sharded import HostPool, LocalSnapshot, row_share, sharding_problem, take_local_snapshot
from hfexport.training.snapshot import (
    Snapshot,
    SnapshotBuffers,
    broadcast_from_rank0,
    global_rank,
    is_sharded,
    plan_for_model,
    take_snapshot,
)

logger = logging.getLogger(__name__)

__all__ = ["ExportStats", "HFExporter", "export_hf"]


@dataclass
class ExportStats:
    """Timings of the most recent export, for logging.

    Attributes:
        step: Its training step.
        stall_s: Time the training loop spent in the call (snapshot and hand-off, waiting if busy; the whole write
            when ``async_write=False``).
        write_s: Time the writer spent writing and verifying it (``None`` until written).
        nbytes: Bytes of tensor data.
        path: The published version directory (``None`` until published).
        size_bytes: Bytes of all its files (``None`` until published).
        verified: Every file was read back and checked against what was meant to be written (``True`` once
            published: an export that fails the check is never published).
        push: ``"queued"`` (handed to the Hub pusher) or ``"off"`` (``push_to_hub=False``).
    """

    step: int
    stall_s: float
    write_s: float | None = None
    nbytes: int = 0
    path: Path | None = None
    size_bytes: int | None = None
    verified: bool = False
    push: str = "off"

    def metrics(self) -> dict[str, float]:
        """The figures as numbers, keyed as logged to a Lightning logger (``hfexport/stall_s``, ...)."""
        out = {"hfexport/step": float(self.step), "hfexport/stall_s": self.stall_s}
        if self.write_s is not None:
            out["hfexport/write_s"] = self.write_s
        if self.size_bytes is not None:
            out["hfexport/size_mb"] = self.size_bytes / 1e6
        out["hfexport/verified"] = float(self.verified)
        out["hfexport/push_queued"] = float(self.push == "queued")
        return out


@dataclass
class _Job:
    """One version handed to the writer."""

    step: int
    target: Path
    snapshot: Snapshot | LocalSnapshot
    card: dict[str, Any]
    manifest: dict[str, Any]
    final: bool
    stats: ExportStats
    started: float  # time.perf_counter() when the training loop called export


@document_options
class HFExporter:
    """Writes versioned Hugging Face exports of a model during training.

    Call :meth:`maybe_export` on every rank under FSDP2 and FSDP1 (pass the ``FullyShardedDataParallel`` module):
    each rank writes its own rows of every version into the final files and global rank 0 publishes it (see README's
    *Distributed exports*); under DDP calling it on rank 0 only is fine (rank 0 writes everything).

    The export options (``dtype`` to ``hub_timeout_s``) are declared once, with their documentation, in
    :class:`~hfexport.training.options.ExportArguments`; ``help(HFExporter)`` shows each below.

    Args:
        output_dir: The export root: each version is published as ``<output_dir>/step_XXXXXX/`` and ``latest`` points at
            the one just written (``~`` expanded; created if missing). Default: ``"hf_exports"``.
        every_n_steps: Export when ``step % every_n_steps == 0`` in :meth:`maybe_export` (an int >= 1); ``None`` exports
            only when :meth:`export` is called. Default: ``None``.

    Raises:
        OptionError: an invalid option, with the value received and what is expected (a ``ValueError``).
        ConversionError: an unknown ``dtype`` (a ``ValueError``).
        TokenizerError: an unusable ``tokenizer``, e.g. a path that does not exist (a ``ValueError``).
        OutputPathError: ``output_dir`` cannot be used (empty, ``~`` of no known user, a name over 255 bytes, under
            a file, not writable): checked here, not at the first export (a ``ValueError``).
        HubSetupError: ``push_to_hub=True`` and the repository cannot be used (token, access): checked here,
            before training.

    Example:
        ```python
        exporter = HFExporter("hf_exports", every_n_steps=500, keep_last_n=3, push_to_hub=True, repo_id="me/gpt2")
        for step in range(1, max_steps + 1):
            loss = train_step()
            exporter.maybe_export(model, step, loss=loss)
        exporter.close()  # waits for the last write and push; re-raises a background failure
        ```
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str] = "hf_exports",
        *,
        every_n_steps: int | None = None,
        dtype: str | torch.dtype = "bfloat16",
        keep_last_n: int | None = None,
        config: Any = None,
        tokenizer: Any = None,
        activation: str | None = None,
        vocab_size: int | None = None,
        untie_embeddings: bool = False,
        model_name: str | None = None,
        max_shard_size: int | str = "5GB",
        allow_nonfinite: bool = False,
        async_write: bool = True,
        if_busy: Literal["wait", "skip"] = "wait",
        on_error: Literal["raise", "warn"] = "raise",
        push_to_hub: bool = False,
        repo_id: str | None = None,
        hub_token: str | None = None,
        hub_private: bool = True,
        hub_revision: str = "main",
        hub_tag_versions: bool = True,
        on_push_error: Literal["warn", "raise"] = "warn",
        hub_max_retries: int = 6,
        hub_backoff_s: float = 1.0,
        hub_push: Literal["every", "latest"] = "every",
        hub_timeout_s: float = 60.0,
    ) -> None:
        options = ExportOptions.create(**option_values(locals()))  # the declared options among the arguments
        self._setup(output_dir, every_n_steps, options)

    @classmethod
    def from_options(
        cls,
        output_dir: str | os.PathLike[str],
        options: ExportOptions,
        *,
        every_n_steps: int | None = None,
        option: str = "output_dir",
        every_rank_calls: bool = False,
    ) -> HFExporter:
        """An exporter for options already validated (:meth:`ExportOptions.create`), as the callback holds them;
        ``option`` is how messages name ``output_dir`` (the callback's ``"dirpath"``); ``every_rank_calls``: the
        caller exports on every rank at the same steps (the callback), so that under DDP each rank may write a
        share of the bytes."""
        exporter = cls.__new__(cls)
        exporter._setup(output_dir, every_n_steps, options, option)
        exporter._every_rank_calls = every_rank_calls
        return exporter

    def _setup(
        self,
        output_dir: str | os.PathLike[str],
        every_n_steps: int | None,
        options: ExportOptions,
        option: str = "output_dir",
    ) -> None:
        every_n_steps = check_int("every_n_steps", every_n_steps, optional=True)
        self.is_writer = global_rank() == 0
        # The root is checked now, not at the first export: empty, ~nouser, too long, under a file, not writable.
        self.root = check_export_root(output_dir, option=option, probe=self.is_writer)
        self._option = option
        self.every_n_steps = every_n_steps
        self.options = options
        self.last_step: int | None = None
        self.last_stats: ExportStats | None = None
        # Versions published, oldest first, until take_published() (the callback logs them to the Lightning logger).
        self._published: deque[ExportStats] = deque(maxlen=1024)
        self.metadata: dict[str, Any] = {}  # extra facts for every card/manifest (e.g. the source)
        self._closed = False
        self._store: VersionStore | None = None
        # Rank 0's writes its versions (_Job); another rank's, under a distributed export, its rows of them (_Part).
        self._writer: BackgroundWriter[Any] | None = None
        self._pusher: HubPusher | None = None
        # The host copies of the last version written, reused by the next snapshot (see SnapshotBuffers).
        self._buffers: SnapshotBuffers | None = None
        # Distributed exports (FSDP2): whether each rank writes its own rows (decided at the first sharded export),
        # and the host buffers of this rank's last written rows.
        self._per_rank: bool | None = None
        self._every_rank_calls = False  # see from_options
        self._coord: Coordinator | None = None  # this exporter's gloo group, when each rank writes its rows
        self._host_pool = HostPool()
        if self.is_writer:
            self._buffers = SnapshotBuffers()
            self._store = VersionStore(self.root, options.keep_last_n)
            # Pending work is finished even if close() is forgotten (the final version must not be lost).
            self._writer = BackgroundWriter(self._write, lambda job: f"step {job.step} to {job.target}")
            sigterm.install()  # preemption: the export in progress gets a grace period (main thread only)
            if options.hub is not None:
                self._pusher = HubPusher(options.hub)
                self._pusher.setup()
                self._pusher.resume(self.root)  # versions a previous run on this root left unpushed (journal)

    @property
    def created(self) -> list[str]:
        """The versions this exporter (or the run it resumes) wrote or is writing, in write order."""
        if self._store is None or self._writer is None:
            return []
        unwritten = [version_name(job.step) for job in self._writer.pending()]  # read first: a job leaves it
        written = list(self._store.created)  # after it is in the store
        return written + [name for name in unwritten if name not in written]

    # ----------------------------------------------------------------------------------------------- public
    @property
    def pusher(self) -> Any:
        """The :class:`~hfexport.hub.push.HubPusher` when pushing (rank 0), else ``None``."""
        return self._pusher

    def should_export(self, step: int) -> bool:
        """Whether :meth:`maybe_export` would export at ``step``."""
        step = check_step(step)
        every = self.every_n_steps
        if not every:
            return False
        return step > 0 and step % every == 0 and step != self.last_step

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
        busy = self._writer is not None and o.async_write and self._writer.busy
        plan = plan_for_model(
            model,
            config=o.config,
            activation=o.activation,
            vocab_size=o.vocab_size,
            untie_embeddings=o.untie_embeddings,
        )
        sharded = is_sharded(plan)
        # DDP (whole weights on every rank): each rank writes a share when asked, or by default when every rank is
        # known to call (the Lightning callback); a plain loop may call on rank 0 alone, so it must ask.
        mode = write_mode()
        split = not sharded and _world_size() > 1 and (mode == "split" or (mode == "auto" and self._every_rank_calls))
        per_rank = (sharded or split) and self._writes_per_rank(plan)
        if per_rank and self._writer is None:  # a rank other than 0: it writes its own rows in the background
            self._writer = BackgroundWriter(self._write_part, lambda job: f"rank {job.rank}'s part of step {job.step}")
            busy = o.async_write and self._writer.busy
        if o.if_busy == "skip" and (sharded or per_rank):
            # Every rank takes part: they skip together or not at all (else the others hang in the gather or in
            # the version's exchange).
            busy = broadcast_from_rank0(busy)
        if busy:
            if o.if_busy == "skip":
                logger.info("Skipped the export of step %d: the previous one is still waiting (if_busy='skip')", step)
                return None
            logger.info("Export of step %d waits for the previous one to be written (if_busy='wait')", step)
        if self._writer is not None and o.async_write:
            self._writer.wait_for_slot()  # before the snapshot: at most one snapshot waits for the writer
            self.raise_if_failed()
        snapshot: Snapshot | LocalSnapshot
        if per_rank:  # this rank's rows only: no collective, no gather
            held = row_share(global_rank(), _world_size()) if split else None
            snapshot = take_local_snapshot(plan, o.dtype, global_rank(), self._host_pool, held=held)
        else:
            snapshot = take_snapshot(plan, o.dtype, self._buffers)  # every rank takes part (FSDP2 gathers)
        self.last_step = step
        if self._writer is None:
            return None
        if not self.is_writer:
            assert isinstance(snapshot, LocalSnapshot)
            part = _Part(step, global_rank(), snapshot)
            if o.async_write:
                self._writer.submit(part)
            else:
                self._writer.run_here(part)
                self.raise_if_failed()
            return None
        facts = {k: _plain(v) for k, v in facts.items() if v is not None}
        card = {"model_name": o.model_name, "step": step, **self.metadata, **facts}
        if o.hub is not None:
            card.update(repo_id=o.hub.repo_id, version=version_name(step))
        manifest = {"step": step, **self.metadata, **facts}
        nbytes = snapshot.total_bytes if isinstance(snapshot, LocalSnapshot) else snapshot.nbytes  # the version's
        stats = ExportStats(step, 0.0, nbytes=nbytes)
        target = self.root / version_name(step)
        job = _Job(step, target, snapshot, card, manifest, final, stats, start)
        if o.async_write:
            stats.stall_s = time.perf_counter() - start  # before the hand-off: the writer's log line reports it
            self._writer.submit(job)  # does not wait: the slot was waited for before the snapshot
        else:
            self._writer.run_here(job)  # stall_s: the whole write, set by the writer
            self.raise_if_failed()
        self.last_stats = stats
        return target

    def take_published(self) -> list[ExportStats]:
        """The figures of the versions published since the last call, oldest first (thread-safe)."""
        out = []
        while True:
            try:
                out.append(self._published.popleft())
            except IndexError:
                return out

    def wait(self) -> None:
        """Block until every queued version is written (not pushed). Raises a background failure."""
        if self._writer is not None:
            self._writer.wait()
        self.raise_if_failed()

    def close(self) -> None:
        """Wait for pending writes and pushes; re-raise a background failure. Idempotent."""
        if self._closed:
            return
        try:
            if self._writer is not None:
                self._writer.close()
            if self._pusher is not None:
                self._pusher.close()
                self._rotate()  # versions kept only until their push succeeded may go now
        finally:
            self._closed = True
            if self._buffers is not None:
                self._buffers.clear()
            self._host_pool.clear()
            if self._coord is not None:
                self._coord.close()
            sigterm.uninstall()  # SIGTERM's previous disposition back once no exporter is open
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the pending background failure (``on_error="raise"``) and the Hub's (``on_push_error="raise"``)."""
        error = self._writer.take_error() if self._writer is not None else None
        if error is not None and not isinstance(error, Exception):
            raise error  # a KeyboardInterrupt/SystemExit in the writer thread: delivered as itself
        if error is not None and self.options.on_error == "raise":
            how = "A background export" if self.options.async_write else "The export"
            raise ExportWorkerError(f"{how} failed: {error}") from error
        if self._pusher is not None:
            self._pusher.check()

    def versions(self) -> list[Version]:
        """The complete versions in the export root, oldest first."""
        return list_versions(self.root)

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the last exported step, the versions created, pending pushes."""
        pending: list[list[Any]] = []
        if self._pusher is not None and self._writer is not None:
            # Versions still being written count too: a checkpoint taken now must not forget their push. Read
            # before the pusher's: a version is submitted to the pusher before it leaves the writer.
            known = {(job.step, str(job.target)) for job in self._writer.pending()}
            known |= {(step, str(path)) for step, path in self._pusher.pending()}
            pending = [[step, path] for step, path in sorted(known)]
        return {"last_step": self.last_step, "created": self.created, "pending_pushes": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; re-queues the Hub pushes the previous run had not finished."""
        self.last_step = state.get("last_step")
        if self._store is not None:
            self._store.restore(list(state.get("created", [])))
        if self._pusher is not None:
            for step, path in state.get("pending_pushes", []):
                self._pusher.resubmit(Path(path), step=int(step))  # unless the journal says it was pushed since

    def __enter__(self) -> HFExporter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        """Close; when the block raised, its exception propagates and a background failure is only logged."""
        if exc is None:
            self.close()
            return
        try:
            self.close()  # the pending versions are still written
        except Exception as error:  # the training loop's exception is what matters; never replace it
            logger.error("hfexport: pending exports failed while the training loop was failing: %s", error)

    # --------------------------------------------------------------------------------------------- internal
    def _write(self, job: _Job) -> None:
        """Write, publish and hand ``job`` to the pusher (in the writer's thread); raises what failed."""
        assert self._store is not None
        target = job.target
        start = time.perf_counter()
        published = False
        try:
            if target.exists():
                logger.warning("%s already exists; replacing it with this run's export of step %d", target, job.step)
            o = self.options
            weights: RankZeroWeights | None = None
            if isinstance(job.snapshot, LocalSnapshot):  # every rank writes its rows; rank 0 assembles the rest
                assert self._coord is not None
                weights = RankZeroWeights(self._coord, job.snapshot, job.step, allow_nonfinite=o.allow_nonfinite)
                tensors = job.snapshot.outputs()
            else:
                tensors = output_tensors(
                    job.snapshot.copies(), o.dtype, allow_nonfinite=o.allow_nonfinite, already_cast=True
                )
            try:
                result = self._write_version(job, tensors, weights)
            except BaseException as exc:
                if weights is not None:
                    weights.finish(exc)
                raise
            if weights is not None:
                weights.finish(None)
            published = True
            if isinstance(job.snapshot, LocalSnapshot):
                self._host_pool.give_back(job.snapshot)
            elif self._buffers is not None:  # the version is written: its host copies may take the next snapshot
                self._buffers.give_back(job.snapshot)
            _release(job.snapshot)
            self._store.published(job.step, unwritten=self._unwritten(), is_pushing=self._is_pushing)
            self._after_publish(job, result, start)
        except BaseException as exc:
            _release(job.snapshot)
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: the user's, not a failed export
                if published:
                    note_interrupt(exc, target, published=True)
                    what = f"after {target} was published (`latest` and rotation may not have caught up)"
                else:
                    what = "before it was published; nothing of it is left"
                logger.warning("Export of step %d interrupted (%s) %s", job.step, type(exc).__name__, what)
            else:
                logger.error("Export of step %d to %s failed: %s", job.step, target, exc)
            raise

    def _write_version(self, job: _Job, tensors: list[OutputTensor], weights: RankZeroWeights | None) -> WriteResult:
        """``write_export`` of ``job`` (the writer's part of :meth:`_write`)."""
        o = self.options
        return write_export(
            job.snapshot.plan,
            job.target,
            dtype=o.dtype,
            tensors=tensors,
            card_facts=job.card,
            manifest_facts={**job.manifest, "dtype": dtype_name(o.dtype)},
            tokenizer=export_tokenizer(job.snapshot.plan, o.tokenizer),
            max_shard_size=o.max_shard_size,
            force=True,
            allow_nonfinite=o.allow_nonfinite,
            progress=False,
            output_option=self._option,
            log_level=logging.DEBUG,  # this exporter's own line below says it all
            weights=weights,
        )

    def _after_publish(self, job: _Job, result: WriteResult, start: float) -> None:
        """The bookkeeping of a published version: journal, stats, the Hub push, the log line."""
        target = job.target
        self._prune_journal()
        stats = job.stats
        stats.write_s = time.perf_counter() - start
        if not self.options.async_write:
            stats.stall_s = time.perf_counter() - job.started
        stats.path, stats.size_bytes, stats.verified = target, sum(result.files.values()), True
        push = "not pushed (push_to_hub=False)"
        if self._pusher is not None:
            self._pusher.submit(target, step=job.step, final=job.final)
            stats.push = "queued"
            hub = self.options.hub
            push = f"push to {hub.repo_id}@{hub.revision} queued" if hub is not None else "push queued"
        logger.info(
            "Exported step %d to %s: %s in %d files, verified; training stalled %.2fs, written in %.2fs; %s",
            job.step,
            target,
            _size(stats.size_bytes),
            len(result.files),
            stats.stall_s,
            stats.write_s,
            push,
        )
        self._published.append(stats)

    def _write_part(self, part: _Part) -> None:
        """A rank other than 0: write this rank's rows of a version (in the writer's thread); raises what failed."""
        try:
            layout = plan_layout(
                [(t.name, t.dtype, tuple(t.shape)) for t in part.snapshot.outputs()],
                parse_size(self.options.max_shard_size),
            )
            assert self._coord is not None
            write_part(self._coord, part.snapshot, part.step, layout, self.options.allow_nonfinite)
            self._host_pool.give_back(part.snapshot)
        except BaseException:
            _release(part.snapshot)
            raise

    def _writes_per_rank(self, plan: ConversionPlan) -> bool:
        """Whether each rank writes its own rows of this sharded plan (decided at the first sharded export, on every
        rank alike: the probe is a collective), else they are gathered to rank 0, which writes them all."""
        if self._per_rank is None:
            why = f"{ENV_MODE}=gather" if write_mode() == "gather" else sharding_problem(plan)
            if why is None:
                self._coord = new_coordinator()
                unshared = self._coord.unshared_ranks(self.root)
                if unshared:
                    why = (
                        f"rank(s) {', '.join(map(str, unshared))} do not see the files rank 0 writes in {self.root} "
                        "(not a file system every rank shares)"
                    )
            self._per_rank = why is None
            if why is None and self.is_writer:
                logger.info(
                    "hfexport: each of the %d ranks writes its own rows into %s (no gather)",
                    torch.distributed.get_world_size(),
                    self.root,
                )
            if why is not None and self.is_writer and not why.startswith(ENV_MODE):
                what = (
                    "gathers the weights to rank 0, which writes them all (its host memory holds the whole model in "
                    "the export dtype)"
                    if is_sharded(plan)
                    else "is written by rank 0 alone, from its replica"
                )
                logger.warning(
                    "hfexport: every export of this run %s: %s. Point output_dir at a shared file system for each "
                    "rank to write its own rows.",
                    what,
                    why,
                )
        return self._per_rank

    def _unwritten(self) -> set[str]:
        return {version_name(job.step) for job in self._writer.pending()} if self._writer is not None else set()

    def _is_pushing(self, path: Path) -> bool:
        return self._pusher is not None and self._pusher.is_pending(path)

    def _rotate(self) -> None:
        if self._store is not None:
            self._store.rotate(unwritten=self._unwritten(), is_pushing=self._is_pushing)
            self._prune_journal()

    def _prune_journal(self) -> None:
        """Forget the settled push-journal entries of the versions rotation just removed (a rotation after the last
        push would otherwise leave them until the next run's first push)."""
        if self._pusher is None or self._store is None or self._store.keep_last_n is None:
            return
        try:
            PushJournal(self.root).prune()
        except OSError as exc:  # the journal is bookkeeping: never fatal to an export
            logger.warning("Could not prune the push journal of %s: %s", self.root, exc)


@dataclass
class _Part:
    """One version's rows that a rank other than 0 writes."""

    step: int
    rank: int
    snapshot: LocalSnapshot


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _release(snapshot: Snapshot | LocalSnapshot) -> None:
    """Drop a snapshot's host copies (its version is written or failed)."""
    if isinstance(snapshot, Snapshot):
        snapshot.tensors.clear()
    else:
        snapshot.pieces.clear()
        for buffer in snapshot.buffers:
            buffer.close()
        snapshot.buffers.clear()


def _size(nbytes: int) -> str:
    """``nbytes`` for a log line: ``"13.1 MB"``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _plain(value: Any) -> int | float | str | bool:
    scalar = scalar_value(value)
    return str(value) if scalar is None else scalar


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


@document_options
def export_hf(
    model: Any,
    step: int,
    output_dir: str | os.PathLike[str] = "hf_exports",
    *,
    epoch: int | None = None,
    loss: float | None = None,
    dtype: str | torch.dtype = "bfloat16",
    keep_last_n: int | None = None,
    config: Any = None,
    tokenizer: Any = None,
    activation: str | None = None,
    vocab_size: int | None = None,
    untie_embeddings: bool = False,
    model_name: str | None = None,
    max_shard_size: int | str = "5GB",
    allow_nonfinite: bool = False,
    on_error: Literal["raise", "warn"] = "raise",
    push_to_hub: bool = False,
    repo_id: str | None = None,
    hub_token: str | None = None,
    hub_private: bool = True,
    hub_revision: str = "main",
    hub_tag_versions: bool = True,
    on_push_error: Literal["warn", "raise"] = "warn",
    hub_max_retries: int = 6,
    hub_backoff_s: float = 1.0,
    hub_push: Literal["every", "latest"] = "every",
    hub_timeout_s: float = 60.0,
) -> Path | None:
    """Export ``model`` as ``<output_dir>/step_XXXXXX`` now; returns when it is written (and pushed).

    The export options are declared in :class:`~hfexport.training.options.ExportArguments` (``help(export_hf)`` shows
    each
    below); ``export_hf`` describes those it uses differently in its own words.

    Args:
        model: A nanoGPT-style ``nn.Module`` (wrapped or not) or a ``transformers`` model.
        step: The training step, a whole number >= 0 (an integral float or a 0-d integer tensor is accepted); it names
            the version ``step_XXXXXX``.
        output_dir: The export root: the version is published as ``<output_dir>/step_XXXXXX/`` and ``latest`` moves to
            it (``~`` expanded; created if missing). Default: ``"hf_exports"``.
        epoch: The training epoch, written into the model card and manifest (``None``: not written). Default: ``None``.
        loss: The training loss (a number or a 0-d tensor), written into the model card and manifest (``None``: not
            written). Default: ``None``.
        keep_last_n: Keep only the last N versions that ``export_hf`` wrote into ``output_dir`` in this process
            (write order), deleting older ones after each call; never ``latest``, never a version another run
            wrote or one you added or changed files in (``None``: keep all). Default: ``None``.
        on_error: A failed write (logged at once): ``"raise"`` raises it from this call as an ``ExportWorkerError``, the
            cause chained; ``"warn"`` only logs it, and the path returned does not exist. Default: ``"raise"``.
        push_to_hub: Push the version to the Hub before returning (needs ``repo_id``; the token and the repository are
            checked before writing), with the versions a previous run on ``output_dir`` left unpushed (push journal).
            Default: ``False``.
        on_push_error: A push that still fails after retries: ``"warn"`` (logged; the version stays on disk and in the
            push journal as failed) or ``"raise"`` (a ``HubError`` from this call, the version written).
            Default: ``"warn"``.
        hub_push: ``"every"`` or ``"latest"``: which waiting versions are pushed when pushes fall behind (see
            ``HFExporter``); this call's version, the final one, is always pushed. Default: ``"every"``.

    Returns:
        The version directory (on rank 0; the would-be path on other ranks); ``None`` when the write failed and
        ``on_error="warn"`` (the failure is logged).

    Raises:
        ConversionError: ``step`` is not a whole number >= 0, or an unknown ``dtype`` (a ``ValueError``).
        OptionError: an invalid option, with the value received and what is expected (a ``ValueError``).
        TokenizerError: an unusable ``tokenizer``, e.g. a path that does not exist (a ``ValueError``).
        OutputPathError: ``output_dir`` cannot be used (empty, ``~`` of no known user, a name over 255 bytes, under
            a file, not writable; checked before writing).
        HubSetupError: ``push_to_hub=True`` and the repository cannot be used (checked before writing).
        ExportWorkerError: the write failed (``on_error="raise"``); the cause, e.g. a ``ConversionError`` for
            NaN weights, is chained.
        HubError: the push still failed after retries (``on_push_error="raise"``).

    Example:
        >>> export_hf(model, 1000, "hf_exports", dtype="float32")  # doctest: +SKIP
        PosixPath('hf_exports/step_001000')
    """
    step = check_step(step)
    options = ExportOptions.create(**option_values(locals()), async_write=False)
    with HFExporter.from_options(output_dir, options) as exporter:
        store = exporter._store  # rank 0's
        if store is not None:  # rotation also counts the versions earlier calls wrote here
            with _EXPORTED_LOCK:
                store.restore(list(_EXPORTED.get(exporter.root, ())))
        path = exporter.export(model, step, final=True, epoch=epoch, loss=loss)
        if store is not None:
            with _EXPORTED_LOCK:
                _EXPORTED[exporter.root] = store.created
            if version_name(step) not in store.created:  # failed, on_error="warn" (logged)
                return None
    return path if path is not None else Path(output_dir) / version_name(step)


# Export root → the versions export_hf wrote there in this process, in write order: what its keep_last_n rotates.
_EXPORTED: dict[Path, tuple[str, ...]] = {}
_EXPORTED_LOCK = threading.Lock()
