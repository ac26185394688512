"""A live model → a CPU snapshot of its weights in the export dtype, ready to be written in the background.

The snapshot holds the weights of *its* step: every tensor is copied (cast once, on the tensor's own device,
then moved to the host), so the optimizer may change the live parameters right after it returns. Nothing of
the live model or its config is modified.

Sources: a nanoGPT-style or Llama-style ``nn.Module`` (facts such as ``n_head`` from its ``config`` /
``params`` / ``args`` attribute or an explicit ``config=``), wrapped or not in DDP / ``torch.compile`` / a
LightningModule, and any ``transformers.PreTrainedModel`` (written with its own config and tied weights). Under
FSDP2 (``fully_shard``) parameters are DTensors: every rank must call :func:`take_snapshot`, each parameter is
cast on its shard and then gathered (``full_tensor``), and only global rank 0 keeps the result: the fallback of a
distributed export (:mod:`hfexport.training.sharded` has each rank write its own rows instead).

Host memory: a snapshot's copies are new tensors, or, with a :class:`SnapshotBuffers`, the buffers of a snapshot
whose version was written (the exporter gives them back once its writer has finished with them): copying into
pages already resident costs about half as much as copying into fresh memory, which the kernel (and, on a VM
that returns free memory to the host, the host) must first provide.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

import torch

from hfexport.convert import plan_conversion
from hfexport.errors import ConversionError, MissingFactError
from hfexport.families import ConversionPlan, TensorPlan
from hfexport.sources import model_facts, strip_prefixes, unwrap_model
from hfexport.training.sharded import is_dtensor

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

__all__ = [
    "Snapshot",
    "SnapshotBuffers",
    "broadcast_from_rank0",
    "global_rank",
    "is_sharded",
    "plan_for_model",
    "take_snapshot",
]


@dataclass
class Snapshot:
    """Host copies of a model's export tensors at one step (on rank 0; empty elsewhere)."""

    plan: ConversionPlan
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    nbytes: int = 0
    # Names whose copy is held in the source layout; :func:`snapshot_outputs` transposes them in the writer's
    # thread (a transposing copy costs ~3x a straight cast: it is kept off the training path).
    untransposed: set[str] = field(default_factory=set)
    dtype: torch.dtype | None = None

    def copies(self) -> ConversionPlan:
        """The plan over the host copies, for :func:`hfexport.convert.output_tensors` with ``already_cast=True``
        (the copies are cast and trimmed; what is left is the plan's fill: a transpose, in the writer's thread)."""
        held = []
        for tp in self.plan.tensors:
            tensor = self.tensors[tp.name]
            transpose = tp.name in self.untransposed
            shape = tuple(tensor.shape[::-1]) if transpose else tuple(tensor.shape)
            held.append(TensorPlan(tp.name, tensor, shape, transpose=transpose))
        return replace(self.plan, tensors=held)


class SnapshotBuffers:
    """The host buffers of one written snapshot, kept for the next snapshot to copy into.

    The exporter's writer calls :meth:`give_back` with a snapshot once its version is written (never while a
    version is being written from it); :func:`take_snapshot` then takes them all (:meth:`take_all`) and copies into
    the ones whose shape and dtype match, allocating the rest. Buffers it could not use are dropped then, so at
    most one snapshot's worth is held here, and only between a finished write and the next snapshot. Thread-safe
    (given back in the writer's thread, taken in the training thread).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: list[torch.Tensor] = []

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        with self._lock:
            return sum(t.numel() * t.element_size() for t in self._spare)

    def give_back(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot``'s host copies for reuse (replacing what is held) and empty the snapshot.

        Only for a snapshot nothing reads any more (its version written): the next snapshot overwrites them.
        """
        # One buffer per storage (a tied copy is one tensor): never handed out twice.
        distinct = list({t.untyped_storage().data_ptr(): t for t in snapshot.tensors.values()}.values())
        snapshot.tensors.clear()
        spare = [t for t in distinct if t.device.type == "cpu" and t.is_contiguous() and _owns_storage(t)]
        with self._lock:
            self._spare = spare

    def take_all(self) -> _Spare:
        """Everything held, removed from here, grouped by ``(shape, dtype)``."""
        with self._lock:
            spare, self._spare = self._spare, []
        groups: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]] = {}
        for t in spare:
            groups.setdefault((tuple(t.shape), t.dtype), []).append(t)
        return _Spare(groups)

    def clear(self) -> None:
        """Drop what is held."""
        with self._lock:
            self._spare = []


class _Spare:
    """Buffers taken from a :class:`SnapshotBuffers` for one snapshot."""

    def __init__(self, groups: dict[tuple[tuple[int, ...], torch.dtype], list[torch.Tensor]]) -> None:
        self._groups = groups

    def new(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A host tensor of ``shape`` and ``dtype`` whose contents will be overwritten: a spare one, else a new one."""
        group = self._groups.get((tuple(shape), dtype))
        return group.pop() if group else torch.empty(shape, dtype=dtype)


def _owns_storage(t: torch.Tensor) -> bool:
    """Whether ``t`` spans its whole storage (not a view into something larger that someone else may hold)."""
    return t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size()


def global_rank() -> int:
    """The global rank under ``torch.distributed`` (0 when not distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def is_sharded(plan: ConversionPlan) -> bool:
    """Whether the plan reads DTensor shards (FSDP2): taking its snapshot is then a collective."""
    return any(tp.source is not None and is_dtensor(tp.source) for tp in plan.tensors)


def broadcast_from_rank0(value: bool) -> bool:
    """Rank 0's ``value`` on every rank (a collective: every rank must call it); ``value`` when not distributed."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


def _is_pretrained(model: Any) -> bool:
    return any(cls.__name__ == "PreTrainedModel" for cls in type(model).__mro__)


def plan_for_model(
    model: Any,
    *,
    config: Any = None,
    activation: str | None = None,
    vocab_size: int | None = None,
    untie_embeddings: bool = False,
) -> ConversionPlan:
    """The conversion plan of a live model (lazy: it references the live tensors).

    Under FSDP2 the sources are the parameters' DTensors. An FSDP1 ``FullyShardedDataParallel`` module (under
    Lightning's ``FSDPStrategy``, the callback passes it) is read through its sharded state dict: its sources are
    ``Shard(0)`` DTensors too (:mod:`hfexport.training.fsdp1`), and building the plan is then a collective.

    Raises:
        ConversionError: a needed fact (e.g. ``n_head``) is neither in ``model.config`` nor in ``config``; a module
            inside FSDP1 given without its ``FullyShardedDataParallel`` wrapper.
    """
    from hfexport.training.fsdp1 import fsdp1_root, has_fsdp1_views, sharded_state  # FSDP1 wrappers

    root = fsdp1_root(model)
    net = unwrap_model(root.module if root is not None else model)
    if root is None and has_fsdp1_views(net):
        raise ConversionError(
            f"Cannot export {type(net).__name__}: its parameters are FSDP1's flat-parameter pieces (it is inside a "
            "FullyShardedDataParallel module). Pass the FullyShardedDataParallel module itself (the object "
            "FullyShardedDataParallel(...) returned), on every rank, so that its sharded state dict can be read."
        )
    live = sharded_state(root, net) if root is not None else net.state_dict(keep_vars=True)
    if _is_pretrained(net):
        return _pretrained_plan(net, live)
    state = strip_prefixes(live)
    facts = model_facts(net, config)
    try:
        return plan_conversion(
            state,
            facts,
            activation=activation or "gelu",
            vocab_size=vocab_size,
            untie_embeddings=untie_embeddings,
        )
    except ConversionError as exc:
        # The heads alone (a message naming several missing facts names the options for each)
        if isinstance(exc, MissingFactError) and exc.facts == ("n_head",):
            raise ConversionError(
                f"Cannot export {type(net).__name__}: n_head is unknown. The model has no `config` / `params` / "
                "`args` attribute with n_head (nanoGPT's GPTConfig, llama2.c's or Meta's ModelArgs, or a dict); "
                "pass config={'n_head': N} to export_hf / HFExporter / HFExportCallback."
            ) from None
        raise


def _pretrained_plan(net: Any, live: dict[str, torch.Tensor]) -> ConversionPlan:
    """A ``transformers`` model goes out as it is: its own names, config and tied weights (``live``: its state)."""
    config = copy.deepcopy(net.config).to_dict()  # never touch the live config
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    tensors = []
    for name, tensor in live.items():
        try:
            key = (tensor.untyped_storage().data_ptr(), tuple(tensor.shape))
        except (RuntimeError, NotImplementedError):
            key = (id(tensor), tuple(tensor.shape))
        if key in seen and key[0] != 0:
            continue  # a tied parameter (lm_head ↔ wte): written once, as save_pretrained does
        seen[key] = name
        tensors.append(TensorPlan(name, tensor, tuple(tensor.shape)))
    return ConversionPlan("transformers", tensors, config, {}, [])


def _gather(src: DTensor, dtype: torch.dtype) -> torch.Tensor:
    """A DTensor's full tensor, cast on the shard first (half the traffic for bf16). A collective."""
    local = src.detach()
    if local.is_floating_point() and local.dtype != dtype:
        local = local.to(dtype)
    return cast("DTensor", local).full_tensor()  # detach() and to() keep a DTensor a DTensor


def take_snapshot(plan: ConversionPlan, dtype: torch.dtype, buffers: SnapshotBuffers | None = None) -> Snapshot:
    """Copy the plan's tensors to host memory in ``dtype`` (every rank must call it under FSDP2).

    Each distinct source is cast once on its own device, in its own layout (straight copies: the transposes
    the output needs are done later, in the writer's thread); the copies never alias the live parameters.
    A CPU source is cast straight into its host buffer; a device source is cast on its device, then copied into
    its host buffer. FSDP2 shards are gathered one tensor at a time, in the plan's order on every rank, and each
    full tensor is dropped (other ranks) or moved to the host (rank 0) before the next: the device never holds the
    whole unsharded model, and the snapshot keeps no reference to a gathered device tensor.

    Args:
        plan: The plan over the live tensors (:func:`plan_for_model`).
        dtype: The export dtype.
        buffers: Host buffers of a written snapshot to copy into (all taken; those that fit are reused, the rest
            dropped). ``None``: every copy is a new tensor.
    """
    rank0 = global_rank() == 0
    sharded = is_sharded(plan)
    if not rank0 and not sharded:
        return Snapshot(plan)
    spare = buffers.take_all() if buffers is not None and rank0 else _Spare({})
    cache: dict[tuple[int, int | None, int | None, int | None], torch.Tensor | None] = {}
    tensors: dict[str, torch.Tensor] = {}
    untransposed: set[str] = set()
    with torch.no_grad():
        for tp in plan.tensors:  # the same order on every rank: the gathers are collectives
            src = tp.source
            if src is None:
                if rank0:
                    tensors[tp.name] = torch.zeros(tp.shape, dtype=dtype)
                continue
            key = (id(src), tp.rows, tp.row_start, tp.rope_heads)
            if key not in cache:
                if is_dtensor(src):
                    out = _gather(src, dtype)  # a fresh tensor of this snapshot's own: no second device copy
                    if tp.rows is not None or tp.row_start is not None or tp.rope_heads is not None:
                        out = _untransposed(tp, out).materialize(dtype, device=out.device)
                    out = out.to(dtype).contiguous()
                    if out.untyped_storage().data_ptr() == src.to_local().untyped_storage().data_ptr():
                        out = out.clone()  # one rank, nothing to gather: the "full" tensor is the parameter
                    if rank0 and out.device.type != "cpu":
                        out = _to_host(out, spare)
                elif rank0:
                    shape = tuple(tp.shape[::-1]) if tp.transpose else tp.shape
                    if src.device.type == "cpu":
                        out = spare.new(shape, dtype)
                        _cast_into(tp, out)  # straight into the host buffer
                    else:
                        on_device = torch.empty(shape, dtype=dtype, device=src.device)
                        _cast_into(tp, on_device)  # cast on the device: half the bytes cross to the host (bf16)
                        out = _to_host(on_device, spare)
                        del on_device
                else:
                    continue
                cache[key] = out if rank0 else None
                del out
            if rank0:
                tensors[tp.name] = cache[key]  # type: ignore[assignment]
                if tp.transpose:
                    untransposed.add(tp.name)
    if not rank0:
        return Snapshot(plan)
    nbytes = sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors.values()}.values())
    return Snapshot(plan, tensors, nbytes, untransposed, dtype)


def _cast_into(tp: TensorPlan, out: torch.Tensor) -> None:
    """``tp``'s source rows cast into ``out``, in the source's layout: a snapshot leaves the transpose (~3x a
    straight cast) to the writer's thread."""
    if tp.rope_heads is not None:
        tp.fill(out)  # the RoPE row permutation (never combined with a transpose)
    else:
        out.copy_(tp.selected())


def _to_host(out: torch.Tensor, spare: _Spare) -> torch.Tensor:
    """A device tensor copied into a host buffer (a spare one when one fits)."""
    host = spare.new(tuple(out.shape), out.dtype)
    host.copy_(out)
    return host


def _untransposed(tp: TensorPlan, source: torch.Tensor | None = None) -> TensorPlan:
    """``tp`` in its source layout (over ``source`` if given): a snapshot leaves the transpose (~3x a straight
    cast) to the writer's thread."""
    if source is not None:
        tp = replace(tp, source=source)
    return replace(tp, shape=tuple(tp.shape[::-1]), transpose=False) if tp.transpose else tp
