"""The exception hierarchy of hfexport.

Every error hfexport raises on purpose derives from :class:`HFExportError`, and also from the builtin that
matches its nature, so callers may catch either (``except ValueError`` keeps working for bad input).
Messages name the value received, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConversionError",
    "DistributedExportError",
    "ExportWorkerError",
    "FileFormatError",
    "HFExportError",
    "HubError",
    "HubSetupError",
    "MissingFactError",
    "OptionError",
    "OutputExistsError",
    "OutputPathError",
    "PushVerificationError",
    "TokenizerError",
    "UnsafeCheckpointError",
    "VerificationError",
]


class HFExportError(Exception):
    """Base class of every error raised by hfexport."""


class CheckpointError(HFExportError, ValueError):
    """A checkpoint file or state dict cannot be read or is not a supported model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint would need arbitrary code to be unpickled; hfexport refuses to run it."""


class ConversionError(HFExportError, ValueError):
    """The weights cannot be converted as asked (bad option, missing fact, non-finite values, ...)."""


class MissingFactError(ConversionError):
    """A fact about the model that its weights cannot tell (``n_head``, the RMSNorm epsilon, ...) is recorded
    nowhere and was not given. Callers tell which by :attr:`fact` (and :attr:`facts`), never by the message.

    Attributes:
        fact: The first missing fact, named as :class:`~hfexport.families.ModelFacts` names it (``"n_head"``).
        facts: Every missing fact (``fact`` first).
        family: The registered family that needed it (``"gpt2"``), or ``None``.
    """

    def __init__(self, message: str, *, fact: str, facts: tuple[str, ...] = (), family: str | None = None) -> None:
        super().__init__(message)
        self.fact = fact
        self.facts = facts or (fact,)
        self.family = family


class FileFormatError(HFExportError, ValueError):
    """A file is not valid in the format its name claims (e.g. a malformed safetensors header)."""


class OptionError(HFExportError, ValueError):
    """An invalid value of an export or Hub option (``dtype``, ``keep_last_n``, ``repo_id``, ...)."""


class OutputExistsError(HFExportError, FileExistsError):
    """The output path is occupied (a non-empty directory without ``force``, or a file)."""


class OutputPathError(HFExportError, ValueError):
    """The output path must not or cannot be used (empty, a symlink, under a file, the working or home directory,
    a file-system root, a directory holding the checkpoint being read, a name that is not UTF-8 or longer than
    255 bytes, a ``~user`` of no known user, an export root this process cannot write)."""


class VerificationError(HFExportError, RuntimeError):
    """A written directory does not hold what was meant to be written."""


class ExportWorkerError(HFExportError, RuntimeError):
    """An export failed: raised from the next call on the exporter when it was written in the background, else from
    the call itself (the cause is chained)."""


class DistributedExportError(HFExportError, RuntimeError):
    """The ranks of a distributed export could not write a version together (a rank failed, died or did not answer
    in time); nothing of the version was published."""


class HubError(HFExportError, RuntimeError):
    """A push to the Hugging Face Hub failed."""


class HubSetupError(HubError):
    """The Hub repository cannot be used (bad token, forbidden repository, ...); raised before training."""


class PushVerificationError(HubError):
    """What a commit holds on the Hub differs from the local files (size or hash); the push is retried."""


class TokenizerError(HFExportError, ValueError):
    """A tokenizer cannot be written into the export (not found, unsafe, or not the model's)."""
