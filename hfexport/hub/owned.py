"""What on a Hub branch hfexport put there, and so what a push may delete or replace.

A push publishes a version's files, its ``hfexport.json`` manifest included. That manifest, as it stands at the head
of the branch, is hfexport's record on the Hub of what an earlier push put there: a file it lists (with the size it
lists) is hfexport's. A push deletes only those of them that the new version lacks; every other file of the branch
(a ``LICENSE``, ``eval_results.json``, ``paper/notes.md`` the user added) is left as it is. A ``README.md`` that is
not the one hfexport pushed (a different size or CRC-32 than the manifest's, or no manifest at all) is kept: the
version's model card is not uploaded, with a warning saying how to let hfexport publish it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hfexport.io.manifest import manifest_files
from hfexport.io.names import MANIFEST_NAME

if TYPE_CHECKING:
    from huggingface_hub import HfApi

__all__ = ["CARD", "RemotePlan", "plan_remote"]

logger = logging.getLogger("hfexport.hub.push")

CARD = "README.md"
# A manifest or card on the Hub larger than this is not read (it is not hfexport's).
_MAX_READ_BYTES = 16 << 20


@dataclass
class RemotePlan:
    """What one commit does to a branch: the files to upload, those to delete, and what it leaves alone."""

    upload: list[str]
    delete: list[str]
    kept_card: bool = False
    replaced: list[str] = field(default_factory=list)  # files hfexport did not push that the version overwrites
    foreign: list[str] = field(default_factory=list)  # files hfexport did not push, left as they are


def _download(api: HfApi, repo_id: str, name: str, commit: str, folder: str) -> bytes:
    path = api.hf_hub_download(repo_id, name, revision=commit, cache_dir=folder)
    return Path(path).read_bytes()


def plan_remote(
    api: HfApi, repo_id: str, head: str, remote: dict[str, int | None], names: list[str], what: str
) -> RemotePlan:
    """Decide what a commit of ``names`` on top of ``head`` uploads and deletes (see the module docstring).

    Args:
        api: The client (its requests are bounded by the caller's :func:`~hfexport.hub.retry.bounded_requests`).
        repo_id: The repository.
        head: The commit at the head of the branch.
        remote: The branch's files and their sizes (``None`` when unknown).
        names: The version's files.
        what: Names the push in log lines.
    """
    owned: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hfexport-hub-") as folder:
        if MANIFEST_NAME in remote and (remote[MANIFEST_NAME] or 0) <= _MAX_READ_BYTES:
            raw = _download(api, repo_id, MANIFEST_NAME, head, folder)
            try:
                files = manifest_files(json.loads(raw))
            except ValueError:
                files = None
            if files is None:
                logger.warning(
                    "%s: the %s on the Hub is not an hfexport manifest: no file of the branch is deleted.",
                    what,
                    MANIFEST_NAME,
                )
            else:
                owned = {n: e for n, e in files.items() if n in remote and remote[n] == e["size"]}
                owned[MANIFEST_NAME] = {"size": remote[MANIFEST_NAME]}
        kept_card = False
        if CARD in names and CARD in remote:
            kept_card = not _card_is_ours(api, repo_id, head, remote[CARD], owned.get(CARD), folder)
    upload = [n for n in names if not (kept_card and n == CARD)]
    plan = RemotePlan(
        upload=upload,
        delete=sorted(set(owned) - set(names) - {".gitattributes"}),
        kept_card=kept_card,
        replaced=sorted(n for n in upload if n in remote and n not in owned and n != ".gitattributes"),
        foreign=sorted(set(remote) - set(owned) - set(names) - {".gitattributes"}),
    )
    if kept_card:
        logger.warning(
            "%s: keeping the %s of %s, which hfexport did not write; the version's model card is not uploaded. To "
            "publish hfexport's card instead, delete or rename README.md on the Hub and push again.",
            what,
            CARD,
            repo_id,
        )
    if plan.replaced:
        logger.warning("%s: replacing file(s) that hfexport did not push: %s", what, ", ".join(plan.replaced))
    if plan.foreign:
        foreign = ", ".join(plan.foreign)
        logger.info("%s: leaving %d file(s) hfexport did not push as they are: %s", what, len(plan.foreign), foreign)
    return plan


def _card_is_ours(
    api: HfApi, repo_id: str, head: str, size: int | None, listed: dict[str, Any] | None, folder: str
) -> bool:
    """Whether the branch's README.md is the one an earlier hfexport push wrote (the manifest's size and CRC-32)."""
    if listed is None or size != listed.get("size") or not isinstance(listed.get("crc32"), str):
        return False
    if size is None or size > _MAX_READ_BYTES:
        return False
    data = _download(api, repo_id, CARD, head, folder)
    return f"{zlib.crc32(data):08x}" == listed["crc32"]
