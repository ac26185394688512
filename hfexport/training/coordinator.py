"""How the ranks of a distributed export agree: a gloo group of their own, a shared-file-system probe, and the
exchange around each version.

The coordination never runs on the training's process group (NCCL on GPUs, busy with the training's own
collectives): each exporter makes a gloo group of its own over every rank (:func:`new_coordinator`, at its first
distributed export), with its own timeout (``HFEXPORT_DIST_TIMEOUT_S``, 1800 s by default), used by its probe and
then only by its writer threads, in the same order on every rank (one version after the other): two exporters
writing at once never interleave their exchanges. Around each version:

1. rank 0 creates the temporary version directory and every weights file (header written, final size), then
   broadcasts ``("go", step, path)`` (``("abort", step, why)`` when it failed before that);
2. every rank writes its rows into the files, fsyncs them and sends rank 0 what its ranges contribute to each
   file's CRC-32, or why it failed;
3. rank 0 fails the version if any rank did (nothing is published, the temporary is removed), else combines the
   CRC-32s and broadcasts ``("check", step, None)``: every rank reads back an equal slice of every file (whoever
   wrote it) and sends what it contributes to the file's CRC-32; rank 0 fails the version unless what the file
   system returns combines to what the ranks wrote (a lost write, or two ranks' writes to one page clobbering each
   other on a file system that does not keep them apart);
4. rank 0 writes the small files and the manifest, verifies and publishes the version, and broadcasts
   ``("done", step, None)`` or ``("done", step, why)``; every rank's job then ends the same way.

A rank that dies makes the others' collectives fail (a closed connection, or the timeout at the latest): nothing is
published and no rank waits longer than the timeout. After a failed collective the group is not used again.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from hfexport._util.checksum import crc32_of_sparse
from hfexport._util.text import short
from hfexport.errors import DistributedExportError, OptionError, VerificationError
from hfexport.io.layout import Layout
from hfexport.training.sharded import LocalSnapshot, create_files, header_contribution, read_back, write_local

logger = logging.getLogger(__name__)

__all__ = [
    "ENV_MODE",
    "ENV_TIMEOUT",
    "Coordinator",
    "RankZeroWeights",
    "new_coordinator",
    "write_mode",
    "write_part",
]

ENV_MODE = "HFEXPORT_DISTRIBUTED_WRITE"
ENV_TIMEOUT = "HFEXPORT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def write_mode() -> str:
    """How the ranks of a distributed run share an export, from ``HFEXPORT_DISTRIBUTED_WRITE``: ``"auto"`` (the
    default: under FSDP2 each rank writes its own rows where it can), ``"gather"`` (rank 0 gathers and writes all)
    or ``"split"`` (also under DDP, whose weights are whole on every rank, each rank writes an equal share of every
    tensor's rows; every rank must then call the exporter).

    Raises:
        OptionError: any other value.
    """
    value = os.environ.get(ENV_MODE, "").strip().lower() or "auto"
    if value not in ("auto", "gather", "split"):
        raise OptionError(f"Invalid {ENV_MODE}={os.environ[ENV_MODE]!r}: set it to auto, gather or split, or unset it.")
    return value


def _timeout_s() -> float:
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (0 < value < 1e7):
        raise OptionError(f"Invalid {ENV_TIMEOUT}={raw!r}: a number of seconds > 0 (default {DEFAULT_TIMEOUT_S:g}).")
    return value


class Coordinator:
    """The exporters' gloo group over every rank (every rank must create it: a collective).

    Args:
        timeout_s: How long a collective of this group waits for the other ranks.
    """

    def __init__(self, timeout_s: float) -> None:
        dist = torch.distributed
        self.timeout_s = timeout_s
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.broken: str | None = None  # why the group must not be used any more

    def close(self) -> None:
        """Release the group (once no writer thread of this exporter uses it)."""
        group, self.group = self.group, None
        self.broken = self.broken or "closed"
        if group is not None and torch.distributed.is_initialized():
            try:
                torch.distributed.destroy_process_group(group)
            except Exception as exc:  # a failed group may not tear down cleanly; it is never used again
                logger.debug("Could not destroy the exporters' gloo group: %s", exc)

    def _collective(self, what: str, op: Any) -> Any:
        if self.broken is not None:
            raise DistributedExportError(
                f"The exporters' process group failed earlier ({self.broken}); no rank can take part in {what}."
            )
        try:
            return op()
        except Exception as exc:  # a rank died or timed out: the group is unusable from now on
            self.broken = f"{what}: {short(exc)}"
            raise DistributedExportError(
                f"Rank {self.rank}: {what} failed ({short(exc)}): another rank died or did not answer within "
                f"{self.timeout_s:g} s ({ENV_TIMEOUT})."
            ) from exc

    def broadcast(self, value: Any, what: str = "a broadcast") -> Any:
        """Rank 0's ``value`` on every rank."""
        box = [value]
        self._collective(what, lambda: torch.distributed.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def gather(self, value: Any, what: str = "a gather") -> list[Any] | None:
        """Every rank's ``value``, by rank, on rank 0 (``None`` elsewhere)."""
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        self._collective(what, lambda: torch.distributed.gather_object(value, out, dst=0, group=self.group))
        return out

    def all_gather(self, value: Any, what: str = "an all-gather") -> list[Any]:
        """Every rank's ``value``, by rank, on every rank."""
        out: list[Any] = [None] * self.world
        self._collective(what, lambda: torch.distributed.all_gather_object(out, value, group=self.group))
        return out

    def unshared_ranks(self, root: Path) -> list[int]:
        """The ranks that do not see a file rank 0 creates in ``root`` (``[]``: a shared file system).

        Rank 0 writes a small probe file (``.hfexport-probe-<random>``) and removes it once every rank has looked.
        """
        name = None
        if self.rank == 0:
            candidate = f".hfexport-probe-{secrets.token_hex(8)}"
            try:
                (root / candidate).write_text(candidate)
                name = candidate
            except OSError as exc:
                logger.warning("Could not write a probe file into %s (%s)", root, exc)
        name = self.broadcast(name, "the shared-file-system probe")
        try:
            seen = name is not None and (root / name).read_text() == name
        except OSError:
            seen = False
        flags = self.all_gather(seen, "the shared-file-system probe")
        if self.rank == 0 and name is not None:
            (root / name).unlink(missing_ok=True)
        return [rank for rank, ok in enumerate(flags) if not ok]


def new_coordinator() -> Coordinator:
    """A :class:`Coordinator` with the timeout of ``HFEXPORT_DIST_TIMEOUT_S`` (a collective: every rank calls it)."""
    return Coordinator(_timeout_s())


def _failures(reports: list[Any]) -> list[str]:
    """``"rank R: why"`` for each gathered ``(result, why)`` report that failed."""
    return [f"rank {rank}: {why}" for rank, (_, why) in enumerate(reports) if why is not None]


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {short(exc)}"


class RankZeroWeights:
    """Rank 0's side of one version: the ``weights`` writer of
    :func:`~hfexport.io.directory.write_hf_directory` (steps 1-3 of the module's protocol), then :meth:`finish`.

    Args:
        coord: The exporters' group.
        snapshot: Rank 0's local snapshot.
        step: The version's step (checked by every rank against its own job).
        allow_nonfinite: Write NaN/inf instead of refusing them.
    """

    def __init__(self, coord: Coordinator, snapshot: LocalSnapshot, step: int, *, allow_nonfinite: bool) -> None:
        self.coord = coord
        self.snapshot = snapshot
        self.step = step
        self.allow_nonfinite = allow_nonfinite
        self._sent = False

    def __call__(self, tmp: Path, layout: Layout) -> Mapping[str, int]:
        create_files(tmp, layout)
        self.coord.broadcast(("go", self.step, str(tmp)), f"the start of step {self.step}'s write")
        self._sent = True
        error: BaseException | None = None
        mine: dict[str, int] = {}
        try:
            mine = write_local(tmp, layout, self.snapshot, allow_nonfinite=self.allow_nonfinite)
        except Exception as exc:
            error = exc
        reports = self.coord.gather((mine, None if error is None else _why(error)), f"step {self.step}'s reports")
        if error is not None:
            raise error
        assert reports is not None
        failed = _failures(reports)
        if failed:
            raise DistributedExportError(
                f"Step {self.step} was not written by every rank ({'; '.join(failed)}); nothing was published."
            )
        crcs = {}
        for file in layout.files:
            parts = [header_contribution(file)] + [part[file.name] for part, _ in reports if file.name in part]
            crcs[file.name] = crc32_of_sparse(parts, file.size)
        self._check(tmp, layout, crcs)
        return crcs

    def _check(self, tmp: Path, layout: Layout, crcs: Mapping[str, int]) -> None:
        """Every rank reads back a slice of every file (step 3 of the module's protocol); the combined CRC-32 of
        what the file system returns must be the one combined from what the ranks wrote."""
        self.coord.broadcast(("check", self.step, None), f"the read-back of step {self.step}")
        seen, error = _read_back(tmp, layout, self.coord)
        reports = self.coord.gather((seen, error), f"step {self.step}'s read-back")
        assert reports is not None
        failed = _failures(reports)
        if failed:
            raise VerificationError(f"Step {self.step}'s files could not be read back ({'; '.join(failed)}).")
        for file in layout.files:
            read = crc32_of_sparse([part[file.name] for part, _ in reports], file.size)
            if read != crcs[file.name]:
                raise VerificationError(
                    f"{file.name} as the file system returns it (CRC-32 {read:08x}) is not what the ranks wrote "
                    f"({crcs[file.name]:08x}): a write was lost, or two ranks' writes to one page clobbered each "
                    "other (a file system that does not keep concurrent writers' byte ranges apart); nothing was "
                    "published."
                )

    def finish(self, error: BaseException | None) -> None:
        """Tell every rank how the version ended (after it was published, or failed); never raises."""
        if self.coord.broken is not None:
            return  # the others' collectives fail too: they learn it that way
        try:
            why = None if error is None else _why(error)
            if not self._sent:
                self.coord.broadcast(("abort", self.step, why or "not started"), f"the abort of step {self.step}")
            else:
                self.coord.broadcast(("done", self.step, why), f"the end of step {self.step}")
        except DistributedExportError as exc:
            logger.warning("%s", exc)


def _read_back(tmp: Path, layout: Layout, coord: Coordinator) -> tuple[dict[str, int], str | None]:
    """This rank's :func:`~hfexport.training.sharded.read_back`, or why it failed."""
    try:
        return read_back(tmp, layout, coord.rank, coord.world), None
    except Exception as exc:
        return {}, _why(exc)


def write_part(coord: Coordinator, snapshot: LocalSnapshot, step: int, layout: Layout, allow_nonfinite: bool) -> None:
    """A rank other than 0: wait for rank 0's temporary, write this rank's rows, report, learn the outcome.

    Raises:
        DistributedExportError: rank 0 failed (before or after this rank wrote), or this rank's write failed (its
            error chained), or a collective failed (a rank died, or the timeout).
    """
    kind, their_step, detail = coord.broadcast(None, f"the start of step {step}'s write")
    if their_step != step:
        raise DistributedExportError(
            f"Rank {coord.rank} exports step {step} while rank 0 exports step {their_step}: every rank must call "
            "the exporter at the same steps."
        )
    if kind == "abort":
        raise DistributedExportError(f"Step {step} failed on rank 0 before any rank wrote: {detail}")
    error: BaseException | None = None
    mine: dict[str, int] = {}
    try:
        mine = write_local(Path(detail), layout, snapshot, allow_nonfinite=allow_nonfinite)
    except Exception as exc:
        error = exc
    coord.gather((mine, None if error is None else _why(error)), f"step {step}'s reports")
    kind, _, why = coord.broadcast(None, f"the end of step {step}")
    if kind == "check":  # every rank wrote: read a slice of every file back
        coord.gather(_read_back(Path(detail), layout, coord), f"step {step}'s read-back")
        kind, _, why = coord.broadcast(None, f"the end of step {step}")
    if error is not None:
        raise DistributedExportError(f"Rank {coord.rank} could not write its part of step {step}: {_why(error)}") from (
            error
        )
    if why is not None:
        raise DistributedExportError(f"Step {step} was not published by rank 0: {why}")
