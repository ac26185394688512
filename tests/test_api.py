"""The public API is what the README documents, and optional parts fail with a helpful message."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import hfexport
from hfexport import HFExporter, export_hf
from hfexport.lightning import HFExportCallback
from hfexport.options import ExportOptions

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_all_names_exist() -> None:
    for name in hfexport.__all__:
        assert hasattr(hfexport, name), name
    assert {"export_hf", "HFExporter", "convert_checkpoint"} <= set(hfexport.__all__)


def test_every_export_option_is_documented_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `(\w+)` \|", README, flags=re.M))
    missing = [name for name in ExportOptions.names() if name not in documented]
    assert not missing, f"export options missing from README's table: {missing}"


def test_dtype_defaults_to_bfloat16_everywhere() -> None:
    import torch

    assert ExportOptions().torch_dtype == torch.bfloat16
    assert inspect.signature(export_hf).parameters["output_dir"].default == "hf_exports"
    cb = HFExportCallback()
    assert ExportOptions(**cb.options).dtype == "bfloat16"


def test_entry_points_reject_unknown_options_with_the_valid_list() -> None:
    import pytest

    with pytest.raises(TypeError, match="Valid"):
        HFExporter("unused", dtpye="float32")
    with pytest.raises(TypeError, match="Valid"):
        HFExportCallback(dtpye="float32")
