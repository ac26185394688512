"""hfexport: GPT-2-style and Llama-style models → verified Hugging Face directories, during training and from the CLI.

Public API::

    from hfexport import convert_checkpoint, export_hf, HFExporter
    from hfexport.lightning import HFExportCallback
"""

from __future__ import annotations

import logging

from ._version import __version__
from .convert import convert_checkpoint, plan_conversion, resolve_dtype, write_export
from .errors import (
    CheckpointError,
    ConversionError,
    ExportWorkerError,
    FileFormatError,
    HFExportError,
    HubError,
    HubSetupError,
    OptionError,
    OutputExistsError,
    OutputPathError,
    TokenizerError,
    UnsafeCheckpointError,
    VerificationError,
)
from .exporter import ExportStats, HFExporter, export_hf
from .options import ExportOptions
from .sources import load_checkpoint
from .verify import verify_directory

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "CheckpointError",
    "ConversionError",
    "ExportOptions",
    "ExportStats",
    "ExportWorkerError",
    "FileFormatError",
    "HFExportError",
    "HFExporter",
    "HubError",
    "HubSetupError",
    "OptionError",
    "OutputExistsError",
    "OutputPathError",
    "TokenizerError",
    "UnsafeCheckpointError",
    "VerificationError",
    "__version__",
    "convert_checkpoint",
    "export_hf",
    "load_checkpoint",
    "plan_conversion",
    "resolve_dtype",
    "verify_directory",
    "write_export",
]
