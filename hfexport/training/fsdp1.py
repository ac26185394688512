"""FSDP1 (``FullyShardedDataParallel``, Lightning's ``FSDPStrategy``): a wrapped model's weights as row shards.

FSDP1 keeps, on each rank, a piece of a *flat* parameter (every weight of an FSDP unit flattened, concatenated and
cut into equal pieces): a rank's part of a weight is a run of elements, not of rows, and the weights the module
shows outside forward (``use_orig_params=True``, Lightning's default) are 1-D views of that run, or empty. An
export needs rows. FSDP's own ``SHARDED_STATE_DICT`` cuts every weight again along dim 0 (``torch.chunk``, as
DTensor's ``Shard(0)``): it unshards one FSDP unit at a time (the all-gather its forward does anyway), copies this
rank's chunk of each weight of the unit and frees the unit again. :func:`sharded_state` turns each chunk into a
``Shard(0)`` DTensor over FSDP's process group: the same source as under FSDP2 (``fully_shard``), read by the
snapshot in the same way.

Memory on each rank: the largest FSDP unit unsharded, for the time of its state dict (as in the forward; the
whole model with Lightning's default of one unit, a block with an ``auto_wrap_policy`` per block), plus this rank's
chunks (1/world of the model) until the snapshot has copied them. The alternative, a ``FULL_STATE_DICT`` with
``rank0_only=True, offload_to_cpu=True``, unshards the same units but keeps the whole model on rank 0's host.

``root.state_dict()`` is a collective: every rank must build the plan (:func:`~hfexport.training.snapshot.
plan_for_model`), as every rank already takes the snapshot under FSDP2.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import TYPE_CHECKING, Any

import torch

from hfexport.errors import ConversionError

if TYPE_CHECKING:
    from torch.distributed.fsdp import FullyShardedDataParallel

logger = logging.getLogger(__name__)

__all__ = ["fsdp1_root", "has_fsdp1_views", "sharded_state"]

# The attribute names FSDP1 and activation checkpointing put between a module and its children: absent from the
# names of a state dict.
_WRAPPER_SEGMENTS = re.compile(r"(^|\.)(?:_fsdp_wrapped_module|_checkpoint_wrapped_module)(?=\.|$)")


def fsdp1_root(model: Any) -> FullyShardedDataParallel | None:
    """``model`` when it is an FSDP1 ``FullyShardedDataParallel`` module (the object it returned), else ``None``."""
    if not torch.distributed.is_available():
        return None
    from torch.distributed.fsdp import FullyShardedDataParallel

    return model if isinstance(model, FullyShardedDataParallel) else None


def has_fsdp1_views(net: torch.nn.Module) -> bool:
    """Whether ``net``'s parameters are FSDP1's views of a flat parameter (``net`` is inside an FSDP1 module)."""
    return any(getattr(p, "_fsdp_flattened", False) for p in net.parameters())


def _clean(name: str) -> str:
    return _WRAPPER_SEGMENTS.sub("", name).lstrip(".")


def sharded_state(root: FullyShardedDataParallel, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``net``'s state dict, read through the FSDP1 module ``root`` that wraps it: each sharded weight a DTensor
    with a ``Shard(0)`` placement (this rank's rows), buffers and unsharded weights (``NO_SHARD``) as tensors.

    A collective: every rank of ``root``'s process group must call it, in the same order. Names are those of
    ``net.state_dict()``; weights tied in ``net`` (one parameter under two names) are one DTensor under both.

    Raises:
        ConversionError: ``net`` is not inside ``root``, or FSDP's shards are not the rows DTensor expects.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardedStateDictConfig, StateDictType

    prefix = next((_clean(name) for name, module in root.named_modules() if module is net), None)
    if prefix is None:
        raise ConversionError(f"{type(net).__name__} is not inside the FSDP module given: cannot read its shards.")
    start = f"{prefix}." if prefix else ""
    meshes: dict[str, Any] = {}
    state: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # torch's own FSDP1 code warns, per export and per tensor, about its deprecated parts (state_dict_type, the
        # ShardedTensor it makes without a device mesh, a helper it calls): nothing a user can act on.
        for message in (
            "FSDP.state_dict_type",
            "Please use DTensor instead",
            "`_get_pg_default_device`",
            "Multiple backends are registered",
            "When using ``NO_SHARD``",  # NO_SHARD: the full (replicated) weights, as under DDP
        ):
            warnings.filterwarnings("ignore", message=re.escape(message))
        with FullyShardedDataParallel.state_dict_type(
            root, StateDictType.SHARDED_STATE_DICT, ShardedStateDictConfig(offload_to_cpu=False)
        ):
            full = root.state_dict()
        for key, value in full.items():
            if key.startswith(start):
                state[key[len(start) :]] = _as_dtensor(key, value, root, meshes)
        del full
    # One parameter under two names (a tied head): one source, as ``net.state_dict(keep_vars=True)`` would give.
    names: dict[int, list[str]] = {}
    for name, param in net.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(_clean(name))
    for group in names.values():
        present = [name for name in group if name in state]
        for name in present[1:]:
            state[name] = state[present[0]]
    return state


def _as_dtensor(name: str, value: Any, root: FullyShardedDataParallel, meshes: dict[str, Any]) -> Any:
    """A ``ShardedTensor`` chunked along dim 0 (FSDP1's sharded state dict without a device mesh) as the DTensor
    ``Shard(0)`` of the same rows, on a 1-D mesh over FSDP's process group; anything else as it is (a DTensor when
    FSDP was given a device mesh, a tensor for a buffer)."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if not isinstance(value, ShardedTensor):
        return value
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard

    group = root.process_group
    if group is None:  # FSDP1 always has one (typed optional)
        raise ConversionError(f"{name}: the FullyShardedDataParallel module has no process group.")
    world, rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
    size = tuple(value.size())
    shards = value.local_shards()
    if len(shards) > 1 or not size:
        raise ConversionError(f"{name}: FSDP's sharded state dict holds {len(shards)} shards of shape {size} here.")
    device = getattr(root, "compute_device", None) or torch.device("cpu")
    local = shards[0].tensor if shards else torch.empty((0, *size[1:]), dtype=value.dtype, device=device)
    offset = shards[0].metadata.shard_offsets[0] if shards else size[0]
    # DTensor's Shard(0) splits as torch.chunk does: check that FSDP's rows are the ones DTensor will assume.
    rows = [len(c) for c in torch.arange(size[0]).chunk(world)] + [0] * world
    if local.shape[0] != rows[rank] or (shards and offset != sum(rows[:rank])):
        raise ConversionError(
            f"{name}: FSDP's shard on rank {rank} (rows {offset}..{offset + local.shape[0]} of {size[0]}) is not "
            "the torch.chunk split DTensor's Shard(0) assumes."
        )
    mesh = meshes.get(local.device.type)
    if mesh is None:
        mesh = meshes[local.device.type] = DeviceMesh.from_group(group, local.device.type)
    return DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(size), stride=_strides(size))


def _strides(size: tuple[int, ...]) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``size``."""
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
