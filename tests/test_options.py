"""The export options: one list of keyword parameters in every entry point, the README's table, validation."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest
import torch

from hfexport import HFExporter, OptionError, export_hf
from hfexport.hub import HubOptions
from hfexport.lightning import HFExportCallback
from hfexport.options import ExportOptions

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
OWN = {"self", "model", "step", "output_dir", "dirpath", "every_n_steps", "every_n_train_steps", "every_n_epochs"}
OWN |= {"export_on_train_end", "epoch", "loss"}
SYNC_ONLY = {"async_write", "if_busy"}  # export_hf always writes synchronously


def options_of(function) -> dict[str, tuple[object, object]]:  # type: ignore[no-untyped-def]
    """The export options a signature takes: name → (default, annotation); all keyword-only."""
    params = inspect.signature(function).parameters
    found = {n: p for n, p in params.items() if n not in OWN}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in found.values()), function
    return {n: (p.default, p.annotation) for n, p in found.items()}


def test_every_entry_point_takes_the_same_typed_options_with_the_same_defaults() -> None:
    reference = options_of(ExportOptions.create)
    assert len(reference) >= 20
    assert options_of(HFExporter.__init__) == reference
    assert options_of(HFExportCallback.__init__) == reference
    assert options_of(export_hf) == {n: v for n, v in reference.items() if n not in SYNC_ONLY}
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(HFExporter).parameters.values())


def test_the_readme_table_lists_each_option_with_its_default() -> None:
    table = dict(re.findall(r"^\| `(\w+)` \| `?([^|`]*)`? \|", README.split("### Export options", 1)[1], flags=re.M))
    table = {name: default for name, default in table.items() if not name.startswith("--")}
    reference = options_of(ExportOptions.create)
    documented = {name: table[name] for name in list(table)[: len(reference)]}
    assert set(documented) == set(reference)
    for name, (default, _) in reference.items():
        assert ast.literal_eval(documented[name]) == default, (name, documented[name], default)


def test_the_hub_options_are_grouped_not_copied() -> None:
    options = ExportOptions.create(push_to_hub=True, repo_id="me/run", hub_push="latest", hub_timeout_s=5)
    assert options.hub == HubOptions(repo_id="me/run", push_mode="latest", timeout_s=5)
    assert ExportOptions.create(repo_id="me/run").hub is None  # not pushing
    assert not {"repo_id", "push_to_hub", "hub_token"} & set(vars(options))
    assert options.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"keep_last_n": 0}, "keep_last_n=0"),
        ({"vocab_size": "50"}, "vocab_size='50'"),
        ({"activation": "relu"}, "activation='relu'"),
        ({"if_busy": "later"}, "if_busy='later'"),
        ({"on_error": "ignore"}, "on_error='ignore'"),
        ({"max_shard_size": "5 parsecs"}, "max_shard_size='5 parsecs'"),
        ({"push_to_hub": True}, "needs repo_id"),
        ({"push_to_hub": True, "repo_id": "no-namespace"}, "namespace/name"),
        ({"push_to_hub": True, "repo_id": "me/run", "hub_timeout_s": 0}, "hub_timeout_s"),
    ],
)
def test_invalid_values_raise_option_error(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match=re.escape(message)):
        ExportOptions.create(**kwargs)
    assert issubclass(OptionError, ValueError)
