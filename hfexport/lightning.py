"""``HFExportCallback``: Hugging Face exports from a Lightning ``Trainer`` (the only module importing lightning).

Arguments follow ``ModelCheckpoint`` (``dirpath``, ``every_n_train_steps``, ...), plus the export options shared
with ``HFExporter``.

When it acts: after optimizer steps (so once per step under gradient accumulation), at the end of every N-th
epoch, and at the end of training (the final step, unless already exported); never during the sanity check,
under ``fast_dev_run``, or outside ``fit``. The model exported is ``pl_module.model`` when that attribute is an
``nn.Module``, else the LightningModule itself. Global rank 0 publishes each version; every rank takes part in
each export: under ``ModelParallelStrategy`` (FSDP2) every rank writes its own rows into the final files, under
``FSDPStrategy`` (FSDP1) every rank reads the wrapper's sharded state dict (``hfexport.training.fsdp1``), then
writes its rows as under FSDP2.

Example:
    ```python
    trainer = L.Trainer(callbacks=[HFExportCallback(dtype="bfloat16", every_n_train_steps=500, keep_last_n=3)])
    ```
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:  # type-checked against the unified package; the standalone one has the same API
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
else:
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import Callback
    except ImportError:  # the standalone package
        try:
            import pytorch_lightning as pl
            from pytorch_lightning.callbacks import Callback
        except ImportError as exc:
            raise ImportError(
                "hfexport.lightning needs Lightning: pip install lightning (hfexport's lightning extra)"
            ) from exc

from hfexport._util.validation import check_bool, check_int
from hfexport.errors import HFExportError
from hfexport.io.outputpath import check_export_root
from hfexport.training.exporter import HFExporter
from hfexport.training.fsdp1 import fsdp1_root
from hfexport.training.options import ExportOptions, document_options, option_values

logger = logging.getLogger(__name__)

__all__ = ["HFExportCallback"]


def _writes() -> bool:
    """Whether this process is (or will be) the global rank 0 that writes: before the Trainer starts, only the
    launchers' environment tells (torchrun, Slurm, Lightning's own launcher set these for every process)."""
    ranks = (os.environ.get(name) for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))
    return all(rank in (None, "", "0") for rank in ranks)


@document_options
class HFExportCallback(Callback):
    """Export the model being trained as versioned Hugging Face directories.

    The export options (``dtype`` to ``hub_timeout_s``) are declared once, with their documentation, in
    :class:`~hfexport.training.options.ExportArguments`; ``help(HFExportCallback)`` shows each below.

    Args:
        dirpath: The export root (``step_XXXXXX/`` directories and ``latest``); ``None`` uses
            ``<trainer.default_root_dir>/hf_exports``. Rank 0's value is used on every rank. Default: ``None``.
        every_n_train_steps: Export every N optimizer steps (an int >= 1; once per optimizer step under gradient
            accumulation); ``None``: not by steps. Default: ``None``.
        every_n_epochs: Export at the end of every N-th epoch (an int >= 1); ``None``: not by epochs. Default: ``None``.
        export_on_train_end: Export the final step when training ends, unless already exported (pending writes and
            pushes are waited for either way). Default: ``True``.
    Raises:
        OptionError: an invalid argument, with the value received and what is expected (a ``ValueError``).
        ConversionError: an unknown ``dtype`` (a ``ValueError``).
        TokenizerError: an unusable ``tokenizer``, e.g. a path that does not exist (a ``ValueError``).
        OutputPathError: ``dirpath`` cannot be used (empty, ``~`` of no known user, a name over 255 bytes, under a
            file, not writable): checked here (the file system on the rank that writes).
        HFExportError: from ``trainer.fit``, on every rank, when the exporter cannot start at set-up (e.g. the Hub
            repository cannot be used; the cause is chained).

    Example:
        ```python
        callback = HFExportCallback(every_n_train_steps=500, keep_last_n=3, dtype="bfloat16")
        trainer = L.Trainer(max_steps=5000, callbacks=[callback])
        trainer.fit(model)  # <default_root_dir>/hf_exports/step_000500 ... step_005000, latest -> step_005000
        ```
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        *,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        export_on_train_end: bool = True,
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
        arguments = locals()  # before any other name is bound
        super().__init__()
        every_n_train_steps = check_int("every_n_train_steps", every_n_train_steps, optional=True)
        every_n_epochs = check_int("every_n_epochs", every_n_epochs, optional=True)
        export_on_train_end = check_bool("export_on_train_end", export_on_train_end)
        self.options = ExportOptions.create(**option_values(arguments))
        # Checked now, before training: on every rank the path itself, on the rank that writes also the file system.
        self.dirpath = check_export_root(dirpath, option="dirpath", probe=_writes()) if dirpath is not None else None
        self.every_n_train_steps = every_n_train_steps
        self.every_n_epochs = every_n_epochs
        self.export_on_train_end = export_on_train_end
        self.exporter: HFExporter | None = None
        self._restored: dict[str, Any] | None = None
        self._final_state: dict[str, Any] | None = None  # the closed exporter's, for a checkpoint saved after fit

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath), every_n_train_steps=self.every_n_train_steps)

    # ------------------------------------------------------------------------------------------ lifecycle
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.exporter is not None:
            return
        if self.dirpath is None:
            self.dirpath = Path(trainer.default_root_dir) / "hf_exports"
        dirpath = trainer.strategy.broadcast(str(self.dirpath), src=0)
        self.dirpath = Path(dirpath)
        # Rank 0 checks the Hub (token, repository) before training; the verdict is shared so that every
        # rank stops together instead of the others hanging in the next collective.
        exporter: HFExporter | None = None
        cause: HFExportError | None = None
        try:
            exporter = HFExporter.from_options(self.dirpath, self.options, option="dirpath", every_rank_calls=True)
        except HFExportError as exc:
            cause = exc
        error = trainer.strategy.broadcast(f"{type(cause).__name__}: {cause}" if cause is not None else None, src=0)
        if error is not None:
            raise HFExportError(f"HFExportCallback could not start: {error}") from cause
        if exporter is None:  # this rank failed where rank 0 did not (a path another node sees differently)
            raise HFExportError(f"HFExportCallback could not start on rank {trainer.global_rank}: {cause}") from cause
        self.exporter = exporter
        if self._restored is not None:
            exporter.load_state_dict(self._restored)
            self._restored = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.exporter is not None:
            self._close_exporter()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.exporter is not None:
            try:
                self._close_exporter()  # finish what was written; the run's own exception is what matters
            except Exception as exc:
                logger.error("hfexport: pending exports failed while the run was failing: %s", exc)

    # ------------------------------------------------------------------------------------------- triggers
    def _should_skip(self, trainer: pl.Trainer) -> bool:
        # Never export during the sanity check, under fast_dev_run (a smoke test), or outside fit().
        fitting = pl.trainer.states.TrainerFn.FITTING  # via ``pl``: also right with the standalone package
        return (
            self.exporter is None
            or trainer.sanity_checking
            or bool(trainer.fast_dev_run)  # type: ignore[attr-defined]  # Lightning sets it outside the class
            or trainer.state.fn != fitting
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimizer steps: under gradient accumulation it stays put for several batches,
        # and the exporter never exports the same step twice.
        if self._should_skip(trainer):
            return
        assert self.exporter is not None
        self._log_published(trainer, self.exporter)  # versions the writer finished since the last batch
        if self.every_n_train_steps is None:
            return
        step = trainer.global_step
        if step > 0 and step % self.every_n_train_steps == 0:
            self._export(trainer, pl_module, step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer) or self.every_n_epochs is None:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._export(trainer, pl_module, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip(trainer):
            return
        assert self.exporter is not None
        if self.export_on_train_end:
            self._export(trainer, pl_module, trainer.global_step, final=True)
        if self.exporter.is_writer and self.exporter.pusher is not None:
            logger.info("hfexport: waiting for pending writes and Hub pushes before ending training")
        exporter = self.exporter
        try:
            self._close_exporter()
        finally:
            self._log_published(trainer, exporter)
        trainer.strategy.barrier("hfexport_train_end")  # the other ranks wait for rank 0's last write

    def _close_exporter(self) -> None:
        """Close the exporter (waits, re-raises a background failure), keeping its state for ``state_dict``."""
        exporter, self.exporter = self.exporter, None
        if exporter is None:
            return
        try:
            exporter.close()
        finally:
            # ``trainer.save_checkpoint`` after ``fit`` must still record what this run exported.
            self._final_state = {"dirpath": str(self.dirpath), **exporter.state_dict()}

    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, *, final: bool = False) -> None:
        assert self.exporter is not None
        if step == self.exporter.last_step:
            return
        loss = trainer.callback_metrics.get("train_loss", trainer.callback_metrics.get("loss"))
        # Under FSDPStrategy (FSDP1) the plan reads the wrapper's sharded state dict; on every rank, as it must.
        wrapped = trainer.strategy.model
        model = wrapped if fsdp1_root(wrapped) is not None else pl_module
        self.exporter.export(model, step, final=final, epoch=trainer.current_epoch, loss=loss)
        self._log_published(trainer, self.exporter)

    def _log_published(self, trainer: pl.Trainer, exporter: HFExporter) -> None:
        """Log each version published since the last call to the trainer's loggers (``hfexport/stall_s``,
        ``hfexport/write_s``, ``hfexport/size_mb``, ...), at the step it holds, next to the loss."""
        for stats in exporter.take_published():
            for each in trainer.loggers:
                each.log_metrics(stats.metrics(), step=stats.step)

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if self.exporter is None:
            return dict(self._restored or self._final_state or {})
        return {"dirpath": str(self.dirpath), **self.exporter.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.exporter is not None:
            self.exporter.load_state_dict(state_dict)
        else:
            self._restored = dict(state_dict)
