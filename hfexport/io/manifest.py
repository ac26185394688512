"""``hfexport.json``, the manifest of an export: parsed and checked against its schema in one place.

The schema: a JSON object whose ``files`` is an object mapping each file of the directory (a relative POSIX name)
to ``{"size": int, "crc32": "8 hex digits"}`` (``crc32`` may be absent); its other keys are facts about the export
(step, dtype, ...). Each reader keeps its own policy on a manifest that breaks it: the writer treats the directory
as not hfexport's (:func:`hfexport.io.directory.replace_refusal`), a push refuses it
(:func:`hfexport.hub.files.publishable_files`), the directory checker reports each broken entry
(:func:`hfexport.io.check.check_directory`), a push deletes nothing on the Hub (:mod:`hfexport.hub.owned`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hfexport.io.names import MANIFEST_NAME

__all__ = [
    "CRC32_NOT_TEXT",
    "NO_INTEGER_SIZE",
    "ManifestFiles",
    "listed_sizes",
    "manifest_files",
    "parse_manifest",
    "read_manifest",
]

logger = logging.getLogger(__name__)

#: Why an entry breaks the schema: its ``size`` is missing or not an integer (``bool`` is not one).
NO_INTEGER_SIZE = "has no integer size"
#: Why an entry breaks the schema: its ``crc32`` is there but not a string.
CRC32_NOT_TEXT = "has a crc32 that is not a string"


@dataclass(frozen=True)
class ManifestFiles:
    """The ``files`` of a manifest, as read, and which of its entries break the schema.

    Attributes:
        entries: File name → entry, every entry as read (those named in ``invalid`` included).
        invalid: File name → why its entry breaks the schema (:data:`NO_INTEGER_SIZE`, :data:`CRC32_NOT_TEXT`).
    """

    entries: dict[str, Any]
    invalid: dict[str, str]


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry, dict) or type(entry.get("size")) is not int:
        return NO_INTEGER_SIZE
    if "crc32" in entry and not isinstance(entry["crc32"], str):
        return CRC32_NOT_TEXT
    return None


def parse_manifest(data: Any) -> ManifestFiles | None:
    """Check a parsed ``hfexport.json`` against the schema, entry by entry.

    Args:
        data: The parsed JSON (any value: a manifest read from disk or the Hub may be anything).

    Returns:
        Its files and the entries that break the schema; ``None`` when ``data`` is not an object with a ``files``
        object.
    """
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return None
    entries: dict[str, Any] = data["files"]
    invalid = {name: why for name, entry in entries.items() if (why := _entry_problem(entry)) is not None}
    return ManifestFiles(entries, invalid)


def manifest_files(data: Any) -> dict[str, dict[str, Any]] | None:
    """The ``files`` of a parsed ``hfexport.json`` (``name → {"size": int, "crc32": str}``), or ``None`` when it does
    not follow the schema (:func:`parse_manifest` finds any problem)."""
    parsed = parse_manifest(data)
    if parsed is None or parsed.invalid:
        return None
    return parsed.entries


def read_manifest(directory: Path) -> dict[str, dict[str, Any]] | None:
    """The files the ``hfexport.json`` of ``directory`` lists (see :func:`manifest_files`).

    Returns:
        The files, or ``None`` when the manifest is JSON that does not follow the schema.

    Raises:
        OSError: the manifest cannot be read (missing included).
        ValueError: it is not JSON (or not UTF-8).
    """
    return manifest_files(json.loads((directory / MANIFEST_NAME).read_bytes()))


def listed_sizes(directory: Path) -> dict[str, int] | None:
    """The files the manifest of ``directory`` lists, with their sizes; ``None`` when it cannot be read or does not
    follow the schema (the writer's policy: such a directory is not provably hfexport's)."""
    try:
        listed = read_manifest(directory)
    except (OSError, ValueError):
        return None
    return None if listed is None else {name: entry["size"] for name, entry in listed.items()}
