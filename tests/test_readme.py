"""The README's snippets compile and the CLI options it documents exist (and vice versa)."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from hfexport.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def _subparser(name: str):
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices[name]


def _option_strings(name: str) -> set[str]:
    return {s for a in _subparser(name)._actions for s in a.option_strings}


def test_readme_has_snippets() -> None:
    assert len(PYTHON_BLOCKS) >= 4
    assert any("hfexport convert" in b for b in BASH_BLOCKS)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_snippet_compiles(index: int) -> None:
    ast.parse(PYTHON_BLOCKS[index])


def test_readme_shell_commands_parse_with_the_real_cli() -> None:
    parser = build_parser()
    checked = 0
    for block in BASH_BLOCKS:
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for prefix in ("python -m hfexport ", "hfexport "):
                if line.startswith(prefix):
                    argv = shlex.split(line[len(prefix) :])
                    parser.parse_args(argv)  # exits (SystemExit) on an unknown option
                    checked += 1
    assert checked >= 6


@pytest.mark.parametrize("command", ["convert", "verify", "push"])
def test_documented_cli_options_exist(command: str) -> None:
    """Every ``--option`` in the README's table/heading for a sub-command is accepted by that sub-command."""
    section = README.split(f"### `hfexport {command}" if command != "push" else ", `hfexport push", 1)[1]
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    documented = set(re.findall(r"`(--[a-z_]+)", section)) | set(re.findall(r"\[(--[a-z_]+)", section))
    documented |= set(re.findall(r"\| (--[a-z_]+)", section))
    real = _option_strings(command)
    assert documented, f"no options documented for {command}"
    unknown = sorted(documented - real)
    assert not unknown, f"README documents options that `hfexport {command}` does not have: {unknown}"


def test_every_convert_option_is_documented() -> None:
    section = README.split("### `hfexport convert", 1)[1].split("\n### ", 1)[0]
    real = {s for s in _option_strings("convert") if s.startswith("--") and "-" not in s[2:] and s != "--help"}
    undocumented = sorted(o for o in real if o not in section)
    assert not undocumented, f"`hfexport convert` options missing from the README: {undocumented}"


def test_the_layout_section_names_every_module() -> None:
    """Every module of ``hfexport/`` (and no module that is not there) is named in the README's layout paragraph."""
    layout = README.split("Layout: the folders of `hfexport/` are its layers", 1)[1].split("\n\n", 1)[0]
    package = ROOT / "hfexport"
    modules = {p.name for p in package.glob("*.py")} | {p.name for p in package.glob("*/*.py")}
    named = set(re.findall(r"`([a-z0-9_]+\.py)`", layout))
    assert modules - named == set(), "modules missing from the README layout"
    assert named - modules == set(), "the README layout names modules that do not exist"
