"""One checker of a model directory, for the writer (before it publishes) and for ``hfexport verify``.

:func:`check_directory` never raises on a damaged or hostile directory: every defect becomes one line in the
returned problems. It checks

- every safetensors file the directory uses (``model.safetensors``, or the shards its index names) with
  :func:`hfexport.io.safetensors.read_header`, which is as strict as ``safetensors`` itself (header length,
  UTF-8 JSON object, known dtypes, shapes, offsets tiling the data section exactly, file size), plus the
  ``{"format": "pt"}`` metadata some ``transformers`` releases need;
- the index against the shards (every tensor in exactly one shard, the one the index names);
- the JSON files (``config.json``, the index, the manifest ``hfexport.json``): valid UTF-8 strict JSON objects
  (no ``NaN``/``Infinity``) whose fields have the types they must have; without ``expected``, every other
  ``*.json`` file of the directory is strict JSON too;
- that every name read from a JSON file is a plain relative path, and that no file is reached through a
  symlink leaving the directory: nothing outside it is ever opened;
- that no foreign weight file lies in the directory (``pytorch_model.bin``, a ``*.safetensors`` the index
  does not name, ...), which ``from_pretrained`` or a Hub push could pick up;
- the size and checksum of every file the manifest lists.

With ``expected`` (the writer's case) it also compares the directory with what was meant to be written: the
exact tensor records and their offsets, the exact bytes of the small files; the checksums are not recomputed
there (the writer computed them from the bytes as it wrote them; reading the files back right after writing them
would only read the page cache's copy).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hfexport._util.checksum import crc32_file
from hfexport._util.fs import FileTooLargeError, read_bounded, resolve_inside
from hfexport._util.jsonio import loads as strict_json
from hfexport._util.text import short
from hfexport.errors import FileFormatError
from hfexport.io.manifest import NO_INTEGER_SIZE, parse_manifest
from hfexport.io.names import CONFIG_FILE, INDEX_FILE, MANIFEST_NAME, SINGLE_FILE
from hfexport.io.safetensors import DTYPE_NAMES, TensorRecord, read_header

__all__ = ["DirectoryCheck", "Expected", "check_directory", "one_line", "unsafe_name"]

MAX_JSON_BYTES = 100_000_000  # an index of a huge model is a few MB; anything past this is not a config
_FOREIGN_DEPTH = 3  # sub-directory levels searched for foreign weight files (DIR may be given by mistake: a home)
# Weight and pickle formats that from_pretrained, other loaders or a Hub push may pick up.
WEIGHT_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".pkl", ".pickle", ".gguf", ".npz", ".onnx"}
)


@dataclass(frozen=True)
class Expected:
    """What the writer meant to write: the stricter expectations of its final verification.

    Attributes:
        records: Every tensor written, in file order, with the file it went to.
        contents: The small files' exact contents, by name.
        files: Every file that must exist (names relative to the directory).
    """

    records: Sequence[TensorRecord]
    contents: Mapping[str, bytes]
    files: Collection[str]


@dataclass
class DirectoryCheck:
    """The outcome of :func:`check_directory`.

    Attributes:
        path: The directory checked.
        problems: What is wrong, one line each; empty when the directory is sound.
        tensors: Tensor count over all safetensors files that could be read.
        files_checked: Files whose checksum was compared with the manifest.
        shapes: Tensor name → shape, over all safetensors files that could be read.
        config: ``config.json`` when it is a JSON object, else ``None``.
    """

    path: Path
    problems: list[str] = field(default_factory=list)
    tensors: int = 0
    files_checked: int = 0
    shapes: dict[str, list[int]] = field(default_factory=dict)
    config: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_directory(path: str | os.PathLike[str], expected: Expected | None = None) -> DirectoryCheck:
    """Check a model directory; never raises for what is in it (only ``KeyboardInterrupt`` and the like).

    Args:
        path: The directory.
        expected: What the writer meant to write (see :class:`Expected`); ``None`` to check any directory
            (``hfexport verify``), in which case ``config.json`` is required and the manifest's checksums are
            recomputed.

    Returns:
        The problems found, the tensor count and shapes, and ``config.json``.
    """
    check = DirectoryCheck(Path(path))
    try:
        root = Path(os.path.realpath(path))
        is_dir = root.is_dir()
    except (OSError, ValueError) as exc:
        _Directory(Path(), check.problems).problem(f"{os.fspath(path)!r} cannot be opened ({exc})")
        return check
    if not is_dir:
        _Directory(Path(), check.problems).problem(f"{os.fspath(path)!r} is not a directory")
        return check
    directory = _Directory(root, check.problems)
    if expected is None or CONFIG_FILE in expected.contents:
        config = directory.read_json(CONFIG_FILE, "")
        check.config = config
        if expected is None and config is not None and not isinstance(config.get("model_type"), str):
            directory.problem(f"{CONFIG_FILE} has no model_type string (transformers cannot choose a model class)")
    headers = _check_weights(directory, check)
    _check_manifest(directory, check, recompute=expected is None, required=[*headers, INDEX_FILE, CONFIG_FILE])
    if expected is None and not check.tensors:
        directory.problem("the directory holds no tensors")
    if expected is None:
        _check_other_json(directory, read={CONFIG_FILE, INDEX_FILE, MANIFEST_NAME})
    if expected is not None:
        _check_expected(directory, headers, expected)
    return check


class _Directory:
    """Opens files strictly inside ``root`` (a real path) and records why it would not."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = root
        self.problems = problems

    def problem(self, text: str) -> None:
        """Record a problem as one printable line (names from the directory may hold newlines or surrogates)."""
        self.problems.append(one_line(text))

    def exists(self, name: str) -> bool:
        return os.path.lexists(self.root / name)

    def file(self, name: Any, source: str) -> Path | None:
        """The regular file ``name`` designates inside the directory, or ``None`` (a problem recorded).

        Args:
            name: A name read from the directory itself (possibly hostile: any JSON value).
            source: Where the name comes from, for the message (``"listed in hfexport.json"``; ``""``: a fixed
                name of the layout).
        """
        where = f" ({source})" if source else ""
        reason = unsafe_name(name)
        if reason:
            self.problem(f"{name!r}{where} {reason}; only plain relative names inside the directory are allowed")
            return None
        real, inside = resolve_inside(self.root / name, self.root)
        if not inside:
            self.problem(f"{name}{where} leaves the directory through a symlink (to {real}); it is not opened")
            return None
        try:
            mode = os.stat(real).st_mode
        except FileNotFoundError:
            self.problem(f"{name}{where} is missing")
            return None
        except OSError as exc:
            self.problem(f"{name}{where} cannot be read ({exc.strerror or exc})")
            return None
        if not stat.S_ISREG(mode):
            self.problem(f"{name}{where} is not a regular file")
            return None
        return real

    def read_json(self, name: str, source: str) -> dict[str, Any] | None:
        """A JSON object file, or ``None`` (a problem recorded)."""
        found, value = self.parse_json(name, source)
        if found and not isinstance(value, dict):
            self.problem(f"{name} is a JSON {type(value).__name__}, not an object")
            return None
        return value if found else None

    def parse_json(self, name: str, source: str) -> tuple[bool, Any]:
        """``(True, value)`` for a strict JSON file (no ``NaN``/``Infinity``), else ``(False, None)`` (a problem
        recorded)."""
        path = self.file(name, source)
        if path is None:
            return False, None
        try:
            return True, strict_json(read_bounded(path, MAX_JSON_BYTES).decode("utf-8"))
        except FileTooLargeError:
            self.problem(f"{name} is larger than {MAX_JSON_BYTES} bytes; not a JSON file of a model directory")
        except OSError as exc:
            self.problem(f"{name} cannot be read ({exc.strerror or exc})")
        except UnicodeDecodeError as exc:
            self.problem(f"{name} is not valid UTF-8 ({exc.reason} at byte {exc.start})")
        except (ValueError, RecursionError) as exc:  # JSONDecodeError; NaN/Infinity; too many digits; too deep
            self.problem(f"{name} is not valid JSON ({short(exc)})")
        return False, None


def _check_other_json(directory: _Directory, read: set[str]) -> None:
    """Every other ``*.json`` file of the directory (``generation_config.json``, the tokenizer's, ...) is strict
    JSON: no ``NaN``/``Infinity``, which only Python's parser reads."""
    try:
        names = sorted(entry.name for entry in os.scandir(directory.root) if entry.name.endswith(".json"))
    except OSError as exc:
        directory.problem(f"the directory cannot be listed ({exc.strerror or exc})")
        return
    for name in names:
        if name not in read and not unsafe_name(name):
            directory.parse_json(name, "")


def one_line(text: str) -> str:
    """``text`` as one printable line: control characters and unpaired surrogates escaped as Python writes them."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def unsafe_name(name: Any) -> str:
    """Why ``name`` is not a plain relative path (``""`` when it is one)."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a file name"
    if not name or "\x00" in name or "\\" in name:
        return "is not a file name"
    try:
        os.fsencode(name)
    except UnicodeError:  # an unpaired surrogate from a JSON escape
        return "is not a file name"
    if PurePosixPath(name).is_absolute():
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "is not a plain relative path"
    return ""


def _weight_map(directory: _Directory) -> dict[str, str] | None:
    """The index's ``weight_map`` when it is well formed, else ``None`` (problems recorded)."""
    index = directory.read_json(INDEX_FILE, "")
    if index is None:
        return None
    if not isinstance(index.get("metadata"), dict):  # transformers reads index["metadata"]
        directory.problem(f"{INDEX_FILE} has no metadata object (transformers fails without one)")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        directory.problem(f"{INDEX_FILE} has no weight_map object")
        return None
    bad = [(k, v) for k, v in weight_map.items() if not isinstance(v, str) or not v.endswith(".safetensors")]
    if bad:
        key, value = bad[0]
        directory.problem(
            f"{INDEX_FILE}: {len(bad)} weight_map entries do not name a .safetensors file (e.g. {key!r}: {value!r})"
        )
        return None
    return weight_map


def _check_weights(directory: _Directory, check: DirectoryCheck) -> dict[str, dict[str, Any]]:
    """Check the weight files; returns the headers that could be read, by file name."""
    weight_map: dict[str, str] | None = None
    if directory.exists(INDEX_FILE):
        weight_map = _weight_map(directory)
        files = sorted(set(weight_map.values())) if weight_map is not None else []
    elif directory.exists(SINGLE_FILE):
        files = [SINGLE_FILE]
    else:
        directory.problem(f"no {SINGLE_FILE} or {INDEX_FILE}")
        files = []
    headers: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    source = f"named in {INDEX_FILE}" if weight_map is not None else ""
    for name in files:
        path = directory.file(name, source)
        if path is None:
            continue
        try:
            with open(path, "rb") as fh:
                header, _ = read_header(fh)
        except FileFormatError as exc:
            directory.problem(f"{name}: not a valid safetensors file: {exc}")
            continue
        except OSError as exc:
            directory.problem(f"{name} cannot be read ({exc.strerror or exc})")
            continue
        headers[name] = header
        if (header.get("__metadata__") or {}).get("format") != "pt":
            directory.problem(f"{name}: missing {{'format': 'pt'}} metadata (some transformers releases fail)")
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            if key in owner:
                directory.problem(f"tensor {key!r} is in both {owner[key]} and {name}")
                continue
            owner[key] = name
            check.shapes[key] = entry["shape"]
            if weight_map is not None and weight_map.get(key) != name:
                directory.problem(f"{key} is in {name} but {INDEX_FILE} says {weight_map.get(key)}")
    if weight_map is not None:
        unplaced = sorted(k for k, v in weight_map.items() if v in headers and k not in owner)
        if unplaced:
            directory.problem(f"{INDEX_FILE} names {len(unplaced)} tensor(s) no shard holds (e.g. {unplaced[0]!r})")
    if weight_map is not None or not directory.exists(INDEX_FILE):  # a broken index: its shards are not foreign
        _check_foreign(directory, set(files), indexed=weight_map is not None)
    check.tensors = len(owner)
    return headers


def _check_foreign(directory: _Directory, ours: set[str], indexed: bool) -> None:
    """Weight files that are not this model's: a loader or a Hub push could pick them up."""
    why = f"{INDEX_FILE} does not name it" if indexed else f"this model's weights are {SINGLE_FILE}"
    for top, dirs, names in os.walk(directory.root, followlinks=False):
        depth = len(Path(top).relative_to(directory.root).parts)
        dirs[:] = [] if depth >= _FOREIGN_DEPTH else sorted(d for d in dirs if d != ".git")
        for base in sorted(names):
            rel = (Path(top) / base).relative_to(directory.root).as_posix()
            if rel in ours or rel == INDEX_FILE:
                continue
            suffix = PurePosixPath(base).suffix.lower()
            if suffix in WEIGHT_SUFFIXES or ".ckpt." in base or base.endswith(".index.json"):
                directory.problem(
                    f"{rel}: a foreign weight file ({why}); from_pretrained or a Hub push could pick it up: "
                    "remove it or move it out of the directory"
                )


def _check_manifest(directory: _Directory, check: DirectoryCheck, *, recompute: bool, required: list[str]) -> None:
    """Sizes and checksums of the files the manifest lists, which must include the model's own (``required``)."""
    if not directory.exists(MANIFEST_NAME):
        return
    manifest = directory.read_json(MANIFEST_NAME, "")
    if manifest is None:
        return
    parsed = parse_manifest(manifest)
    if parsed is None:
        directory.problem(f"{MANIFEST_NAME} has no files object")
        return
    files = parsed.entries
    unlisted = [name for name in required if name not in files and directory.exists(name)]
    if unlisted:
        directory.problem(f"{MANIFEST_NAME} does not list {', '.join(unlisted)}: it does not describe this directory")
    source = f"listed in {MANIFEST_NAME}"
    for name, entry in files.items():
        path = directory.file(name, source)
        if path is None:
            continue
        if parsed.invalid.get(name) == NO_INTEGER_SIZE:
            directory.problem(f"{name}: its {MANIFEST_NAME} entry {NO_INTEGER_SIZE}")
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            directory.problem(f"{name}: size {size} != {entry['size']} in the manifest")
            continue
        if not recompute:
            continue
        want = entry.get("crc32")
        if not isinstance(want, str):
            directory.problem(f"{name}: no checksum in the manifest")
            check.files_checked += 1
            continue
        try:
            same = f"{crc32_file(path):08x}" == want
        except OSError as exc:
            directory.problem(f"{name} cannot be read ({exc.strerror or exc})")
            continue
        if not same:
            directory.problem(f"{name}: CRC-32 differs from the manifest (the file changed or is corrupt)")
        check.files_checked += 1


def _check_expected(directory: _Directory, headers: Mapping[str, dict[str, Any]], expected: Expected) -> None:
    """The writer's stricter expectations: exact records and offsets, exact small files."""
    by_file: dict[str, list[TensorRecord]] = {}
    for rec in expected.records:
        by_file.setdefault(rec.file, []).append(rec)
    for fname, recs in by_file.items():
        header = headers.get(fname)
        if header is None:
            directory.problem(f"{fname}: written, but not readable as one of the directory's weight files")
            continue
        keys = set(header) - {"__metadata__"}
        names = {r.name for r in recs}
        if keys != names:
            directory.problem(
                f"{fname}: tensors {sorted(keys ^ names)[:5]} differ between the file and what was written"
            )
            continue
        position = 0
        for rec in recs:
            entry = header[rec.name]
            if entry["dtype"] != DTYPE_NAMES[rec.dtype] or tuple(entry["shape"]) != tuple(rec.shape):
                directory.problem(
                    f"{fname}: {rec.name} is {entry['dtype']} {entry['shape']}, expected "
                    f"{DTYPE_NAMES[rec.dtype]} {list(rec.shape)}"
                )
            begin, end = entry["data_offsets"]
            if (begin, end) != (position, position + rec.nbytes):
                directory.problem(
                    f"{fname}: {rec.name} lies at bytes {begin}:{end}, expected {position}:{position + rec.nbytes}"
                )
            position += rec.nbytes
    for name, content in expected.contents.items():
        path = directory.file(name, "written")
        if path is not None and _read(path) != content:
            directory.problem(f"{name} does not hold what was written")
    if len(by_file) > 1:
        index = directory.read_json(INDEX_FILE, "")
        if index is not None and index.get("weight_map") != {r.name: r.file for r in expected.records}:
            directory.problem(f"{INDEX_FILE} does not map every tensor to its shard")
    for name in expected.files:
        if name not in expected.contents:
            directory.file(name, "written")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
