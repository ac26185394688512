"""hfexport: GPT-2-style and Llama-style models → verified Hugging Face directories, during training and from the CLI.

Public API::

    from hfexport import convert_checkpoint, export_hf, HFExporter
    from hfexport.lightning import HFExportCallback
"""

from __future__ import annotations

import logging

from hfexport._version import __version__
from hfexport.convert import convert_checkpoint, plan_conversion, resolve_dtype, write_export
from hfexport.errors import (
    CheckpointError,
    ConversionError,
    DistributedExportError,
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
from hfexport.sources import load_checkpoint
from hfexport.training.exporter import ExportStats, HFExporter, export_hf
from hfexport.training.options import ExportOptions
from hfexport.verify import verify_directory

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "CheckpointError",
    "ConversionError",
    "DistributedExportError",
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
