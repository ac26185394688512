"""How hfexport is installed and what it says of itself: it is not on PyPI, and it bounds no dependency it does
not need to (issue 17 §1.5)."""

from __future__ import annotations

import re
from pathlib import Path

from hfexport.card import render_model_card

ROOT = Path(__file__).resolve().parents[1]
#: Texts a user reads: the READMEs, the example, every message hfexport prints.
USER_TEXTS = [ROOT / "README.md", ROOT / "examples" / "README.md", ROOT / "examples" / "train_gpt2.py"]
USER_TEXTS += sorted((ROOT / "hfexport").rglob("*.py"))


def test_no_text_tells_users_to_install_hfexport_from_pypi() -> None:
    """``pip install hfexport`` and ``pip install 'hfexport[extra]'`` need a published package; there is none."""
    from_index = re.compile(r"pip install\s+(-U\s+)?[\"']?hfexport\b(?!\S*\s*@)")
    found = [f"{path.name}: {m.group(0)}" for path in USER_TEXTS for m in from_index.finditer(path.read_text())]
    assert not found, found
    readme = (ROOT / "README.md").read_text()
    assert "not published on PyPI" in readme and "git+" in readme and "pip install -e ." in readme


def test_model_cards_link_to_no_package_index() -> None:
    card = render_model_card({"model_name": "m", "step": 3, "tokenizer": "gpt2"})
    assert "pypi.org" not in card and "hfexport" in card


def test_torch_has_no_upper_bound_and_ci_installs_the_cpu_build_first() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = pyproject.split("dependencies = [", 1)[1].split("\n]", 1)[0]
    assert re.findall(r'"torch\b[^"]*"', dependencies) == ['"torch>=2.4"']
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index('pip install --quiet "torch==2.13.0"') < ci.index('pip install --quiet -e ".[dev]"')
    assert 'if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]' in ci  # nothing installed later replaces it


def test_the_readme_names_llama_cpps_limit_for_custom_bpe() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "llama.cpp's converter recognises it" not in readme
    assert "BPE pre-tokenizer was not recognized" in readme
