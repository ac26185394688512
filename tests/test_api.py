"""The public API is what the README documents, and optional parts fail with a helpful message."""

from __future__ import annotations

import pytest
import torch

from hfexport import HFExporter, OptionError
from hfexport.lightning import HFExportCallback


def test_the_callback_and_the_exporter_default_to_bfloat16(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What each entry point really uses, not its signature: the options it built."""
    assert HFExportCallback().options.dtype == torch.bfloat16
    with HFExporter(tmp_path, async_write=False) as exporter:
        assert exporter.options.dtype == torch.bfloat16


def test_entry_points_reject_unknown_options() -> None:
    with pytest.raises(TypeError, match="dtpye"):
        HFExporter("unused", dtpye="float32")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="dtpye"):
        HFExportCallback(dtpye="float32")  # type: ignore[call-arg]


def test_invalid_values_raise_the_package_error_which_is_a_value_error() -> None:
    with pytest.raises(OptionError, match=r"every_n_train_steps=0"):
        HFExportCallback(every_n_train_steps=0)
    with pytest.raises(ValueError, match=r"keep_last_n=0"):
        HFExportCallback(keep_last_n=0)
    with pytest.raises(OptionError, match="hub_push"):
        HFExportCallback(push_to_hub=True, repo_id="me/run", hub_push="sometimes")
