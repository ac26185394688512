"""Export options: declared once (``ExportArguments``), taken alike by every entry point, README's table, checks."""

from __future__ import annotations

import ast
import inspect
import re
import typing
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from hfexport import HFExporter, OptionError, export_hf
from hfexport.hub.push import HubOptions
from hfexport.lightning import HFExportCallback
from hfexport.training.options import DECLARED, ExportArguments, ExportOptions, document_options

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SYNC_ONLY = {"async_write", "if_busy"}  # export_hf always writes synchronously
ENTRY_POINTS = {
    "ExportOptions.create": ExportOptions.create,
    "HFExporter": HFExporter.__init__,
    "HFExportCallback": HFExportCallback.__init__,
    "export_hf": export_hf,
}


def options_of(function) -> list[tuple[str, object, object]]:  # type: ignore[no-untyped-def]
    """The export options a signature takes, in order: (name, default, annotation); all keyword-only."""
    params = [p for p in inspect.signature(function).parameters.values() if p.name in DECLARED]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), function
    return [(p.name, p.default, p.annotation) for p in params]


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_entry_point_takes_the_declared_options_with_their_types_and_defaults(name: str) -> None:
    declared = [(f.name, f.default, f.type) for f in fields(ExportArguments)]
    assert len(declared) >= 20
    if name == "export_hf":
        declared = [option for option in declared if option[0] not in SYNC_ONLY]
    assert options_of(ENTRY_POINTS[name]) == declared
    params = inspect.signature(ENTRY_POINTS[name]).parameters.values()
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def test_a_choice_s_check_accepts_exactly_the_values_its_type_names() -> None:
    hints = typing.get_type_hints(ExportArguments)
    choices = {n: typing.get_args(t) for n, t in hints.items() if typing.get_origin(t) is typing.Literal}
    assert set(choices) == {"if_busy", "on_error", "on_push_error", "hub_push"}
    for name, values in choices.items():
        check = DECLARED[name].metadata["check"]
        assert [check(name, value) for value in values] == list(values)
        with pytest.raises(OptionError, match=name):
            check(name, "sometimes")


def test_create_refuses_an_unknown_option_like_python_does() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'dtpye'"):
        ExportOptions.create(dtpye="float32")


def test_the_readme_table_lists_each_option_with_its_default() -> None:
    table = re.findall(r"^\| `(\w+)` \| `?([^|`]*)`? \|", README.split("### Export options", 1)[1], flags=re.M)
    documented = table[: len(DECLARED)]
    assert [name for name, _ in documented] == list(DECLARED)
    for name, default in documented:
        assert ast.literal_eval(default) == DECLARED[name].default, (name, default)


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


# ------------------------------------------------------------------------------------- docstrings
# The three entry points and ``ExportOptions.create``: each docstring (what ``help()`` shows) documents every
# parameter, in signature order; the export options' entries come from the declaration (``document_options``).
DOCUMENTED = {
    "ExportOptions.create": (ExportOptions.create, ExportOptions.create),
    "HFExporter": (HFExporter, HFExporter.__init__),
    "HFExportCallback": (HFExportCallback, HFExportCallback.__init__),
    "export_hf": (export_hf, export_hf),
}
# Options whose entry deliberately differs from the declared one: export_hf writes one version, synchronously,
# with an exporter of its own (so rotation has nothing of its to remove).
OWN_WORDING = {("export_hf", name) for name in ("keep_last_n", "on_error", "push_to_hub", "on_push_error", "hub_push")}
_ENTRY = re.compile(r"(\*{0,2}\w+)(?: \([^)]*\))?: (.*)")
_DEFAULT = re.compile(r"Default: ``(.+?)``\.")


def args_section(doc: str | None) -> dict[str, str]:
    """A Google-style docstring's ``Args:`` entries: name → text (continuation lines joined by one space).

    A line at the entries' indentation that is not ``name: text`` (e.g. ``dtype, keep_last_n: ...``, several
    names in one entry) fails: each parameter gets its own entry.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    headers = [i for i, line in enumerate(lines) if line.strip() == "Args:"]
    assert len(headers) == 1, f"expected one 'Args:' section, found {len(headers)}"
    header_indent = len(lines[headers[0]]) - len(lines[headers[0]].lstrip())
    entries: dict[str, list[str]] = {}
    indent: int | None = None
    for line in lines[headers[0] + 1 :]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= header_indent:
            break  # the next section (Returns:, Raises:, Example:, ...) or the end of Args
        indent = depth if indent is None else indent
        if depth == indent:
            match = _ENTRY.fullmatch(line.strip())
            assert match, f"not a 'name: text' entry in Args: {line.strip()!r}"
            name = match.group(1).lstrip("*")
            assert name not in entries, f"{name} documented twice"
            entries[name] = [match.group(2)]
        else:
            assert entries, f"continuation before the first entry: {line!r}"
            entries[list(entries)[-1]].append(line.strip())
    return {name: " ".join(parts) for name, parts in entries.items()}


def parameters_of(function) -> dict[str, inspect.Parameter]:  # type: ignore[no-untyped-def]
    params = inspect.signature(function).parameters
    return {name: p for name, p in params.items() if name not in ("self", "cls")}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_the_docstring_documents_every_parameter_and_only_those_in_order(name: str) -> None:
    documented_object, function = DOCUMENTED[name]
    assert list(args_section(documented_object.__doc__)) == list(parameters_of(function))


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_the_documented_defaults_are_the_signature_defaults(name: str) -> None:
    documented_object, function = DOCUMENTED[name]
    documented = args_section(documented_object.__doc__)
    for param, p in parameters_of(function).items():
        stated = _DEFAULT.findall(documented.get(param, ""))
        if p.default is inspect.Parameter.empty:
            assert not stated, f"{name}({param}) has no default, yet its entry states one: {stated}"
        else:
            assert len(stated) == 1, f"{name}({param}): the entry must end with 'Default: ``{p.default!r}``.'"
            assert ast.literal_eval(stated[0]) == p.default, (name, param, stated[0], p.default)


def declared_entry(name: str) -> str:
    default = DECLARED[name].default
    shown = f'"{default}"' if isinstance(default, str) else repr(default)
    return f"{DECLARED[name].metadata['doc']} Default: ``{shown}``."


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_the_entry_points_describe_each_option_in_the_declared_words(name: str) -> None:
    documented = args_section(DOCUMENTED[name][0].__doc__)
    for option, _, _ in options_of(DOCUMENTED[name][1]):
        if (name, option) in OWN_WORDING:
            assert documented[option] != declared_entry(option), f"{name}({option}) no longer differs: drop it"
        else:
            assert documented[option] == declared_entry(option), (name, option)


def test_document_options_fills_what_a_docstring_leaves_out_in_signature_order() -> None:
    def entry(
        model: object, *, dtype: str = "bfloat16", hub_push: str = "every", keep_last_n: int | None = None
    ) -> None:
        """Export.

        Args:
            model: The model,
                on two lines.
            keep_last_n: In my own words. Default: ``None``.

        Returns:
            Nothing.
        """

    def bare(*, vocab_size: int | None = None) -> None:
        """Check.

        Raises:
            OptionError: a bad value.
        """

    documented = args_section(document_options(entry).__doc__)
    assert list(documented) == ["model", "dtype", "hub_push", "keep_last_n"]
    assert documented["model"] == "The model, on two lines."
    assert documented["keep_last_n"] == "In my own words. Default: ``None``."
    assert documented["dtype"] == declared_entry("dtype") and documented["hub_push"] == declared_entry("hub_push")
    assert inspect.cleandoc(entry.__doc__ or "").endswith("Returns:\n    Nothing.")
    assert args_section(document_options(bare).__doc__) == {"vocab_size": declared_entry("vocab_size")}
    assert "Raises:\n    OptionError: a bad value." in inspect.cleandoc(bare.__doc__ or "")
    with pytest.raises(AssertionError, match="not a 'name: text' entry"):  # one entry per parameter
        args_section("Export.\n\nArgs:\n    dtype, keep_last_n: See ExportOptions.create.\n")


# ------------------------------------------------------------------------------- one validator per kind of value
# YAML, Hydra and the environment hand over strings; Python code hands over True for 1. Nothing is coerced.
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"allow_nonfinite": "false"}, "allow_nonfinite='false': expected True or False (not a str)."),
        ({"untie_embeddings": "no"}, "untie_embeddings='no': expected True or False (not a str)."),
        ({"async_write": 1}, "async_write=1: expected True or False (not an int)."),
        ({"push_to_hub": "yes"}, "push_to_hub='yes': expected True or False (not a str)."),
        ({"hub_private": "false"}, "hub_private='false': expected True or False (not a str)."),
        ({"hub_tag_versions": 0}, "hub_tag_versions=0: expected True or False (not an int)."),
        ({"keep_last_n": True}, "keep_last_n=True: expected a positive int, or None (not a bool)."),
        ({"keep_last_n": 2.0}, "keep_last_n=2.0: expected a positive int, or None (not a float)."),
        ({"vocab_size": True}, "vocab_size=True: expected a positive int, or None (not a bool)."),
        ({"hub_max_retries": True}, "hub_max_retries=True: expected an int >= 0 (not a bool)."),
        ({"hub_max_retries": "3"}, "hub_max_retries='3': expected an int >= 0 (not a str)."),
        ({"hub_backoff_s": "1"}, "hub_backoff_s='1': expected a finite number >= 0 and <= 60 (not a str)."),
        ({"hub_backoff_s": float("nan")}, "hub_backoff_s=nan: expected a finite number >= 0 and <= 60."),
        ({"hub_timeout_s": float("inf")}, "hub_timeout_s=inf: expected a finite number > 0 and <= 86400."),
        ({"hub_timeout_s": True}, "hub_timeout_s=True: expected a finite number > 0 and <= 86400 (not a bool)."),
        ({"hub_timeout_s": "60"}, "hub_timeout_s='60': expected a finite number > 0 and <= 86400 (not a str)."),
        ({"if_busy": True}, "if_busy=True: expected one of 'wait', 'skip' (not a bool)."),
        ({"hub_revision": ""}, "hub_revision='': expected a non-empty str."),
    ],
)
def test_each_option_takes_only_its_own_kind_of_value(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError) as info:
        ExportOptions.create(**kwargs)
    assert str(info.value) == f"Invalid value for {message}"
    with pytest.raises(OptionError, match=re.escape(message)):  # pushing or not, the same check
        ExportOptions.create(**{"push_to_hub": True, "repo_id": "me/run", **kwargs})


@pytest.mark.parametrize("entry", ["HFExporter", "HFExportCallback", "export_hf"])
@pytest.mark.parametrize(
    "kwargs",
    [{"keep_last_n": True}, {"allow_nonfinite": "false"}, {"hub_timeout_s": "60"}, {"on_error": 1}, {"hub_token": 7}],
)
def test_every_entry_point_checks_each_option_alike(tmp_path, entry, kwargs) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError) as expected:
        ExportOptions.create(**kwargs)
    with pytest.raises(OptionError) as info:
        if entry == "HFExporter":
            HFExporter(tmp_path / "x", **kwargs)
        elif entry == "HFExportCallback":
            HFExportCallback(tmp_path / "x", **kwargs)
        else:
            export_hf(torch.nn.Linear(2, 2), 1, tmp_path / "x", **kwargs)
    assert str(info.value) == str(expected.value)
    assert not (tmp_path / "x").exists()


def test_valid_values_pass_unchanged() -> None:
    options = ExportOptions.create(
        keep_last_n=2, allow_nonfinite=True, untie_embeddings=False, async_write=False, push_to_hub=True,
        repo_id="me/run", hub_max_retries=0, hub_backoff_s=0, hub_timeout_s=5, vocab_size=10,
    )  # fmt: skip
    assert options.keep_last_n == 2 and options.allow_nonfinite is True and options.async_write is False
    assert options.hub is not None and options.hub.max_retries == 0 and options.hub.timeout_s == 5.0
    assert isinstance(options.hub.backoff_base_s, float)


def test_a_hub_token_of_the_wrong_type_is_refused_without_showing_it() -> None:
    with pytest.raises(OptionError) as info:
        ExportOptions.create(hub_token=12345678)
    assert "12345678" not in str(info.value) and "hub_token" in str(info.value)


@pytest.mark.parametrize(("kind", "name"), [("exporter", "every_n_steps"), ("callback", "every_n_train_steps")])
@pytest.mark.parametrize(("value", "words"), [(True, "(not a bool)"), ("10", "(not a str)"), (0, "")])
def test_every_n_steps_is_checked_alike_by_the_exporter_and_the_callback(tmp_path, kind, name, value, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError) as info:
        if kind == "exporter":
            HFExporter(tmp_path / "x", every_n_steps=value)
        else:
            HFExportCallback(tmp_path / "x", every_n_train_steps=value)
    assert (
        str(info.value)
        == f"Invalid value for {name}={value!r}: expected a positive int, or None{' ' + words if words else ''}."
    )


def test_the_callback_s_own_options_are_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match=re.escape("every_n_epochs=True: expected a positive int")):
        HFExportCallback(every_n_epochs=True)
    with pytest.raises(OptionError, match=re.escape("export_on_train_end='no': expected True or False")):
        HFExportCallback(export_on_train_end="no")


def test_export_hf_refuses_a_string_bool_before_writing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match=re.escape("allow_nonfinite='false'")):
        export_hf(torch.nn.Linear(2, 2), 1, tmp_path / "x", allow_nonfinite="false")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_retries": True}, "max_retries=True: expected an int >= 0 (not a bool)"),
        ({"timeout_s": float("inf")}, "hub_timeout_s=inf: expected a finite number > 0 and <= 86400"),
        ({"backoff_base_s": "1"}, "backoff_base_s='1': expected a finite number >= 0 (not a str)"),
    ],
)
def test_hub_options_built_directly_are_checked_alike(kwargs, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match=re.escape(words)):
        HubOptions(repo_id="me/run", **kwargs)
