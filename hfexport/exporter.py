"""``export_hf`` and ``HFExporter``: Hugging Face exports from any PyTorch training loop.

``export_hf(model, step)`` writes one version and returns when it is on disk. ``HFExporter`` decides when to
export (every N steps, plus whatever you ask for), takes a snapshot of the weights in the export dtype and
hands it to a single background worker, so the training loop only pays for the copy. Each version is
published atomically as ``<root>/step_XXXXXX/``, then ``latest`` moves to it, then old versions are rotated
(``keep_last_n``), then it is queued for the Hub (``push_to_hub``).

``HFExporter`` only decides (when, skip or wait, the FSDP busy broadcast) and hands off: the writing to a
:class:`~hfexport.background.BackgroundWriter`, the versions to a :class:`~hfexport.versions.VersionStore`
(publishing, ``latest``, rotation), the pushes to a :class:`~hfexport.hub.HubPusher`.

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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .background import BackgroundWriter
from .convert import dtype_name, output_tensors, write_export
from .errors import ConversionError, ExportWorkerError, HFExportError, OptionError
from .hub import HubPusher
from .options import ExportOptions
from .snapshot import (
    Snapshot,
    broadcast_from_rank0,
    global_rank,
    is_sharded,
    plan_for_model,
    take_snapshot,
)
from .sources import scalar_value
from .versions import Version, VersionStore, list_versions, version_name
from .writer import note_interrupt

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
    """One version handed to the writer."""

    step: int
    target: Path
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
        dtype, keep_last_n, config, tokenizer, activation, vocab_size, untie_embeddings, model_name,
            max_shard_size, allow_nonfinite, async_write, if_busy, on_error: How each version is written; see
            :meth:`~hfexport.options.ExportOptions.create` (``dtype="bfloat16"`` by default).
        push_to_hub, repo_id, hub_token, hub_private, hub_revision, hub_tag_versions, on_push_error,
            hub_max_retries, hub_backoff_s, hub_push, hub_timeout_s: Where and how each version is pushed; see
            :meth:`~hfexport.options.ExportOptions.create`.

    Call :meth:`maybe_export` on every rank under FSDP2 (gathering the weights is a collective); under DDP
    calling it on rank 0 only is fine. Only global rank 0 writes.

    Raises:
        OptionError: an invalid option (a ``ValueError``).
        HubSetupError: ``push_to_hub=True`` and the repository cannot be used (checked here, before training).
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
        options = ExportOptions.create(
            dtype=dtype,
            keep_last_n=keep_last_n,
            config=config,
            tokenizer=tokenizer,
            activation=activation,
            vocab_size=vocab_size,
            untie_embeddings=untie_embeddings,
            model_name=model_name,
            max_shard_size=max_shard_size,
            allow_nonfinite=allow_nonfinite,
            async_write=async_write,
            if_busy=if_busy,
            on_error=on_error,
            push_to_hub=push_to_hub,
            repo_id=repo_id,
            hub_token=hub_token,
            hub_private=hub_private,
            hub_revision=hub_revision,
            hub_tag_versions=hub_tag_versions,
            on_push_error=on_push_error,
            hub_max_retries=hub_max_retries,
            hub_backoff_s=hub_backoff_s,
            hub_push=hub_push,
            hub_timeout_s=hub_timeout_s,
        )
        self._setup(output_dir, every_n_steps, options)

    @classmethod
    def from_options(
        cls, output_dir: str | os.PathLike[str], options: ExportOptions, *, every_n_steps: int | None = None
    ) -> HFExporter:
        """An exporter for options already validated (:meth:`ExportOptions.create`), as the callback holds them."""
        exporter = cls.__new__(cls)
        exporter._setup(output_dir, every_n_steps, options)
        return exporter

    def _setup(self, output_dir: str | os.PathLike[str], every_n_steps: int | None, options: ExportOptions) -> None:
        if every_n_steps is not None and (not isinstance(every_n_steps, int) or every_n_steps < 1):
            raise OptionError(f"Invalid value for every_n_steps={every_n_steps!r}. Must be >= 1 or None.")
        self.root = Path(output_dir).expanduser()
        self.every_n_steps = every_n_steps
        self.options = options
        self.is_writer = global_rank() == 0
        self.last_step: int | None = None
        self.last_stats: ExportStats | None = None
        self.metadata: dict[str, Any] = {}  # extra facts for every card/manifest (e.g. the source)
        self._closed = False
        self._store: VersionStore | None = None
        self._writer: BackgroundWriter[_Job] | None = None
        self._pusher: HubPusher | None = None
        if self.is_writer:
            self._store = VersionStore(self.root, options.keep_last_n)
            # Pending work is finished even if close() is forgotten (the final version must not be lost).
            self._writer = BackgroundWriter(self._write, lambda job: f"step {job.step} to {job.target}")
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
        busy = self._writer is not None and o.async_write and self._writer.busy
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
        if self._writer is not None and o.async_write:
            self._writer.wait_for_slot()  # before the snapshot: at most one snapshot waits for the writer
            self.raise_if_failed()
        snapshot = take_snapshot(plan, o.dtype)  # every rank takes part (FSDP2 gathers)
        self.last_step = step
        if self._writer is None:
            return None
        facts = {k: _plain(v) for k, v in facts.items() if v is not None}
        card = {"model_name": o.model_name, "step": step, **self.metadata, **facts}
        if o.hub is not None:
            card.update(repo_id=o.hub.repo_id, version=version_name(step))
        manifest = {"step": step, **self.metadata, **facts}
        stats = ExportStats(step, 0.0, nbytes=snapshot.nbytes)
        target = self.root / version_name(step)
        job = _Job(step, target, snapshot, card, manifest, final, stats)
        (self._writer.submit if o.async_write else self._writer.run_here)(job)
        stats.stall_s = time.perf_counter() - start
        if not o.async_write:
            self.raise_if_failed()
        self.last_stats = stats
        return target

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
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the pending background failure (``on_error="raise"``) and the Hub's (``on_push_error="raise"``)."""
        error = self._writer.take_error() if self._writer is not None else None
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

    def __exit__(self, *exc: object) -> None:
        self.close()

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
            write_export(
                job.snapshot.plan,
                target,
                dtype=o.dtype,
                tensors=output_tensors(
                    job.snapshot.copies(), o.dtype, allow_nonfinite=o.allow_nonfinite, already_cast=True
                ),
                card_facts=job.card,
                manifest_facts={**job.manifest, "dtype": dtype_name(o.dtype)},
                tokenizer=o.tokenizer,
                max_shard_size=o.max_shard_size,
                force=True,
                allow_nonfinite=o.allow_nonfinite,
                progress=False,
            )
            published = True
            job.snapshot.tensors.clear()  # free the host copy now, not when the job object dies
            self._store.published(job.step, unwritten=self._unwritten(), is_pushing=self._is_pushing)
            job.stats.write_s = time.perf_counter() - start
            logger.info("Exported step %d to %s in %.2fs", job.step, target, job.stats.write_s)
            if self._pusher is not None:
                self._pusher.submit(target, step=job.step, final=job.final)
        except BaseException as exc:
            job.snapshot.tensors.clear()
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

    def _unwritten(self) -> set[str]:
        return {version_name(job.step) for job in self._writer.pending()} if self._writer is not None else set()

    def _is_pushing(self, path: Path) -> bool:
        return self._pusher is not None and self._pusher.is_pending(path)

    def _rotate(self) -> None:
        if self._store is not None:
            self._store.rotate(unwritten=self._unwritten(), is_pushing=self._is_pushing)


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
) -> Path:
    """Export ``model`` as ``<output_dir>/step_XXXXXX`` now; returns when it is written (and pushed).

    Args:
        model: A nanoGPT-style ``nn.Module`` (wrapped or not) or a ``transformers`` model.
        step: The training step (names the version).
        output_dir: The export root.
        epoch: The training epoch, for the model card and manifest.
        loss: The training loss, for the model card and manifest.
        dtype, keep_last_n, config, tokenizer, activation, vocab_size, untie_embeddings, model_name,
            max_shard_size, allow_nonfinite, on_error, push_to_hub, repo_id, hub_token, hub_private,
            hub_revision, hub_tag_versions, on_push_error, hub_max_retries, hub_backoff_s, hub_push,
            hub_timeout_s: See :meth:`~hfexport.options.ExportOptions.create` (the write is synchronous).

    Returns:
        The version directory (on rank 0; the would-be path on other ranks).

    Raises:
        ConversionError: ``step`` is not a whole number >= 0.
        OptionError: an invalid option (a ``ValueError``).

    Example:
        >>> export_hf(model, 1000, "hf_exports", dtype="float32")  # doctest: +SKIP
        PosixPath('hf_exports/step_001000')
    """
    step = check_step(step)
    options = ExportOptions.create(
        dtype=dtype,
        keep_last_n=keep_last_n,
        config=config,
        tokenizer=tokenizer,
        activation=activation,
        vocab_size=vocab_size,
        untie_embeddings=untie_embeddings,
        model_name=model_name,
        max_shard_size=max_shard_size,
        allow_nonfinite=allow_nonfinite,
        on_error=on_error,
        push_to_hub=push_to_hub,
        repo_id=repo_id,
        hub_token=hub_token,
        hub_private=hub_private,
        hub_revision=hub_revision,
        hub_tag_versions=hub_tag_versions,
        on_push_error=on_push_error,
        hub_max_retries=hub_max_retries,
        hub_backoff_s=hub_backoff_s,
        hub_push=hub_push,
        hub_timeout_s=hub_timeout_s,
        async_write=False,
    )
    with HFExporter.from_options(output_dir, options) as exporter:
        path = exporter.export(model, step, final=True, epoch=epoch, loss=loss)
    return path if path is not None else Path(output_dir) / version_name(step)
