"""``torch.distributed.checkpoint`` (DCP) directories: the metadata read safely, each tensor read through DCP's reader.

A DCP checkpoint (torchtitan's, Lightning's ``ModelParallelStrategy`` / ``FSDPStrategy(state_dict_type="sharded")``,
``torch.distributed.checkpoint.save``) is a directory holding a ``.metadata`` file and ``*.distcp`` data files. The
``.metadata`` file is a pickle (``FileSystemReader.read_metadata`` calls ``pickle.load`` on it): here it is read
by an unpickler that only builds the classes of ``torch.distributed.checkpoint.metadata`` and the few plain types
they hold (:data:`ALLOWED_GLOBALS`); a file naming anything else is refused before anything in it runs.

From the metadata alone every tensor's key, global shape and dtype are known. :meth:`DCPCheckpoint.read` reads one
tensor's values when they are needed, with ``torch.distributed.checkpoint.load`` (single process, ``no_dist``) into
a tensor of its global shape: DCP's own reader assembles it from the chunks every rank wrote (each chunk is
``torch.load``-ed with ``weights_only=True`` by DCP). Nothing else is read: the optimizer's state is never
touched, and memory holds one tensor (plus the chunk being copied into it) per read, never the model.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from hfexport._util.text import first_line
from hfexport.errors import CheckpointError, UnsafeCheckpointError

logger = logging.getLogger(__name__)

__all__ = [
    "ALLOWED_GLOBALS",
    "METADATA_NAME",
    "DCPCheckpoint",
    "DCPTensor",
    "is_dcp_directory",
    "read_metadata",
]

#: The file of a DCP checkpoint that lists its tensors (``torch.distributed.checkpoint.filesystem._metadata_fn``).
METADATA_NAME = ".metadata"
#: A ``.metadata`` pickle holds keys, shapes and file offsets: past this size it is refused (a 405B model's on 1024
#: ranks is a few tens of MB).
MAX_METADATA_BYTES = 1 << 30
_METADATA_CLASSES = (
    "Metadata",
    "TensorStorageMetadata",
    "BytesStorageMetadata",
    "ChunkStorageMetadata",
    "TensorProperties",
    "_MEM_FORMAT_ENCODING",
    "MetadataIndex",
    "StorageMeta",
)
_PATHS = ("PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath")
#: Every global a ``.metadata`` pickle may name (module, name); torch dtypes (``torch.float32``, ...) too.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("torch.distributed.checkpoint.metadata", name) for name in _METADATA_CLASSES]
    + [
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # a name → one of torch's layouts (torch.strided)
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
    ]
    + [(module, name) for module in ("pathlib", "pathlib._local") for name in _PATHS]  # StorageMeta.checkpoint_id
)


def is_dcp_directory(path: Path) -> bool:
    """Whether ``path`` is a directory holding DCP's ``.metadata`` file."""
    return path.is_dir() and (path / METADATA_NAME).is_file()


class _MetadataUnpickler(pickle.Unpickler):
    """Builds only what :data:`ALLOWED_GLOBALS` names (and torch dtypes); refuses any other global unexecuted."""

    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) in ALLOWED_GLOBALS or dtype:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


class _Refused(pickle.UnpicklingError):
    """A global outside :data:`ALLOWED_GLOBALS` (its dotted name is the message)."""


def read_metadata(directory: Path) -> Any:
    """The ``torch.distributed.checkpoint.metadata.Metadata`` of a DCP directory, unpickled safely.

    Raises:
        UnsafeCheckpointError: the pickle names a global other than DCP's metadata classes (nothing was run).
        CheckpointError: the file is empty, too large, truncated or not DCP metadata.
    """
    _require_dcp()
    from torch.distributed.checkpoint.metadata import Metadata

    file = directory / METADATA_NAME
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"{str(file)!r} is empty (0 bytes): the checkpoint was not saved completely.")
    if size > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"{str(file)!r} is {size} bytes, more than DCP metadata ever needs ({MAX_METADATA_BYTES}); it is not a "
            "torch.distributed.checkpoint metadata file."
        )
    try:
        with open(file, "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
    except _Refused as exc:
        raise UnsafeCheckpointError(
            f"{str(file)!r} refers to {exc}, which loading would have to import and run; a "
            "torch.distributed.checkpoint .metadata file holds only DCP's metadata classes, so nothing in it was "
            "executed. If you trust the checkpoint, load it with torch.distributed.checkpoint and save the model's "
            "state_dict() with torch.save."
        ) from None
    except Exception as exc:  # a corrupt pickle can make the unpickler raise almost anything
        raise CheckpointError(
            f"{str(file)!r} is not readable torch.distributed.checkpoint metadata ({first_line(exc)}). It may be "
            "truncated (an interrupted save or copy)."
        ) from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, Mapping):
        raise CheckpointError(
            f"{str(file)!r} holds a {type(metadata).__name__}, not torch.distributed.checkpoint metadata."
        )
    _check_storage(directory, metadata)
    return metadata


def _check_storage(directory: Path, metadata: Any) -> None:
    """Refuse metadata that points at data outside its directory (an absolute path, ``..``)."""
    storage = metadata.storage_data
    if not isinstance(storage, Mapping):
        raise CheckpointError(
            f"{str(directory / METADATA_NAME)!r} lists no data files (storage_data is "
            f"{type(storage).__name__}): it was not written by torch.distributed.checkpoint's FileSystemWriter."
        )
    for info in storage.values():
        relative = getattr(info, "relative_path", None)
        parts = PurePosixPath(str(relative).replace(os.sep, "/")).parts if isinstance(relative, str) else ()
        if not parts or parts[0] == "/" or ".." in parts or os.path.isabs(str(relative)):
            raise CheckpointError(
                f"{str(directory / METADATA_NAME)!r} points at data file {relative!r}, outside the checkpoint "
                "directory: refused. Re-save the checkpoint with torch.distributed.checkpoint."
            )


@dataclass(frozen=True)
class DCPTensor:
    """One tensor of a DCP checkpoint, as its metadata describes it.

    Attributes:
        key: Its key in the checkpoint (flattened: ``model.layers.0.attention.wq.weight``).
        path: The key's path in the saved (nested) state dict, e.g. ``("model", "layers.0.attention.wq.weight")``.
        shape: Its global shape (the whole tensor, however many ranks saved chunks of it).
        dtype: Its dtype.
        chunks: How many chunks (one per rank that held a shard of it) it was saved in.
    """

    key: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: int


class DCPCheckpoint:
    """A DCP checkpoint directory: its tensors, described by the metadata, read one at a time on demand.

    Args:
        directory: The directory holding ``.metadata`` and the ``*.distcp`` files.

    Attributes:
        tensors: Key → :class:`DCPTensor`, for every tensor entry (non-tensor entries are left out: they would need
            unpickling arbitrary objects).

    Raises:
        UnsafeCheckpointError, CheckpointError: see :func:`read_metadata`.
    """

    def __init__(self, directory: Path) -> None:
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.directory = directory
        self._metadata = read_metadata(directory)
        paths = self._metadata.planner_data if isinstance(self._metadata.planner_data, Mapping) else {}
        self.tensors: dict[str, DCPTensor] = {}
        for key, entry in self._metadata.state_dict_metadata.items():
            if not isinstance(entry, TensorStorageMetadata) or not isinstance(key, str):
                continue
            path = paths.get(key)
            if not (isinstance(path, (tuple, list)) and path and all(isinstance(p, (str, int)) for p in path)):
                path = (key,)
            try:
                dtype, shape, chunks = entry.properties.dtype, tuple(int(d) for d in entry.size), len(entry.chunks)
                valid = isinstance(dtype, torch.dtype) and all(d >= 0 for d in shape)
            except (AttributeError, TypeError, ValueError):
                valid = False
            if not valid:
                raise CheckpointError(
                    f"{str(directory / METADATA_NAME)!r} describes {key} without a valid dtype and shape: it is not "
                    "metadata torch.distributed.checkpoint wrote, or it is damaged."
                )
            self.tensors[key] = DCPTensor(key, tuple(map(str, path)), shape, dtype, chunks)
        self._lock = threading.Lock()

    def read(self, key: str) -> torch.Tensor:
        """Read one tensor, whole, through ``torch.distributed.checkpoint.load`` (in this process, ``no_dist``).

        Reads run one at a time: memory holds the tensor being assembled and the chunk DCP copies into it.

        Raises:
            KeyError: ``key`` is not a tensor of the checkpoint.
            CheckpointError: DCP cannot read it (a missing or truncated data file).
        """
        import torch.distributed.checkpoint as dist_cp
        from torch.distributed.checkpoint.api import CheckpointException

        _quiet_single_process_warning()
        info = self.tensors[key]
        out = torch.empty(info.shape, dtype=info.dtype)
        with self._lock:
            try:
                # A reader per read: DCP resets and sets up its reader at every load.
                reader = _reader_class()(self.directory, self._metadata)
                dist_cp.load({key: out}, storage_reader=reader, no_dist=True)
            except (Exception, CheckpointException) as exc:
                # DCP wraps what failed (a BaseException: KeyboardInterrupt goes through as itself).
                failures = exc.failures if isinstance(exc, CheckpointException) else {}
                cause: BaseException = next((failure[0] for failure in failures.values()), exc)
                if not isinstance(cause, Exception):
                    raise cause from None
                raise CheckpointError(
                    f"Cannot read {key} from the distributed checkpoint {str(self.directory)!r} "
                    f"({first_line(cause)}). A data file (*.distcp) may be missing or truncated: re-copy the "
                    "checkpoint directory whole."
                ) from exc
        logger.debug("Read %s %s from %s", key, list(info.shape), self.directory)
        return out


@functools.cache
def _quiet_single_process_warning() -> None:
    """Silence DCP's warning, at every load with ``no_dist``, that it assumes one process (reading in one process is
    the intent here): that message only, process-wide (a filter set inside the reads would not be thread-safe)."""
    warnings.filterwarnings(
        "ignore", message=r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent"
    )


@functools.cache
def _reader_class() -> type:
    """``FileSystemReader`` whose ``read_metadata`` returns metadata read safely (given) instead of unpickling it."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def __init__(self, directory: Path, metadata: Any) -> None:
            super().__init__(directory)
            self._safe_metadata = metadata

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = self._safe_metadata
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader


def _require_dcp() -> None:
    """Refuse, naming the fix, where this torch build has no ``torch.distributed`` (DCP is part of it)."""
    if not torch.distributed.is_available():
        raise CheckpointError(
            f"Reading a torch.distributed.checkpoint directory needs torch.distributed, which this torch "
            f"{torch.__version__} build lacks; convert on a machine whose torch has it (Linux and macOS builds do)."
        )
