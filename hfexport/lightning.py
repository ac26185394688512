"""``HFExportCallback``: Hugging Face exports from a Lightning ``Trainer`` (the only module importing lightning).

Arguments follow ``ModelCheckpoint`` (``dirpath``, ``every_n_train_steps``, ...), plus the export options shared
with ``HFExporter``.

When it acts: after optimizer steps (so once per step under gradient accumulation), at the end of every N-th
epoch, and at the end of training (the final step, unless already exported); never during the sanity check,
under ``fast_dev_run``, or outside ``fit``. The model exported is ``pl_module.model`` when that attribute is an
``nn.Module``, else the LightningModule itself. Only global rank 0 writes; under FSDP2 every rank gathers.

Example:
    ```python
    trainer = L.Trainer(callbacks=[HFExportCallback(dtype="bfloat16", every_n_train_steps=500, keep_last_n=3)])
    ```
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(
            "hfexport.lightning needs Lightning: pip install 'hfexport[lightning]' (or pip install lightning)"
        ) from exc

from .errors import HFExportError, OptionError
from .exporter import HFExporter
from .options import ExportOptions

logger = logging.getLogger(__name__)

__all__ = ["HFExportCallback"]


class HFExportCallback(Callback):
    """Export the model being trained as versioned Hugging Face directories.

    Args:
        dirpath: The export root; ``None`` uses ``<trainer.default_root_dir>/hf_exports``.
        every_n_train_steps: Export every N optimizer steps (``None``: not by steps).
        every_n_epochs: Export at the end of every N-th epoch (``None``: not by epochs).
        export_on_train_end: Export the final step when training ends (if not already exported).
        dtype, keep_last_n, config, tokenizer, activation, vocab_size, untie_embeddings, model_name,
            max_shard_size, allow_nonfinite, async_write, if_busy, on_error, push_to_hub, repo_id, hub_token,
            hub_private, hub_revision, hub_tag_versions, on_push_error, hub_max_retries, hub_backoff_s, hub_push,
            hub_timeout_s: The export options; see :meth:`~hfexport.options.ExportOptions.create`
            (``dtype="bfloat16"`` by default).

    Raises:
        OptionError: an invalid argument, with the value and what is expected (a ``ValueError``).
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
        super().__init__()
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise OptionError(f"Invalid value for {name}={value!r}. Must be >= 1 or None.")
        self.options = ExportOptions.create(
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
        self.dirpath = Path(dirpath) if dirpath is not None else None
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
            exporter = HFExporter.from_options(self.dirpath, self.options)
        except HFExportError as exc:
            cause = exc
        error = trainer.strategy.broadcast(f"{type(cause).__name__}: {cause}" if cause is not None else None, src=0)
        if error is not None:
            raise HFExportError(f"HFExportCallback could not start: {error}") from cause
        self.exporter = exporter
        if self._restored is not None:
            self.exporter.load_state_dict(self._restored)
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
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != fitting
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimizer steps: under gradient accumulation it stays put for several batches,
        # and the exporter never exports the same step twice.
        if self._should_skip(trainer) or self.every_n_train_steps is None:
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
        self._close_exporter()
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
        previous = self.exporter.last_stats
        self.exporter.export(pl_module, step, final=final, epoch=trainer.current_epoch, loss=loss)
        stats = self.exporter.last_stats
        if trainer.logger is not None and self.exporter.is_writer and stats is not None:
            metrics = {"hfexport/stall_s": stats.stall_s}
            if previous is not None and previous.write_s is not None:
                metrics["hfexport/write_s"] = previous.write_s
            trainer.logger.log_metrics(metrics, step=step)

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
