"""Exports read by the tools people feed them to, one export per tokenizer kind hfexport writes.

The kinds: GPT-2's BPE, a custom byte-level BPE (the example's), nanoGPT's character-level ``meta.pkl``, a
sentencepiece ``tokenizer.model`` (a llama2.c Llama) and a ``tiktoken.Encoding``. The consumers:

* transformers 5 (this interpreter) and 4.57 (CI's torch-free ``.venv-tf4``, see :func:`test_tokenizer.tf4_python`):
  ``model(**tok(text))`` must give ``model(input_ids)``'s logits. Under 5.x that is measured; under 4.x (no torch
  there) the test checks what makes it true: ``tok(text)`` returns exactly ``input_ids`` (the same ids) and an
  all-ones ``attention_mask``, no ``token_type_ids`` (which ``GPT2LMHeadModel`` adds as embeddings and Llama and
  ONNX Runtime reject).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from exportkit import TINY
from llama_ref import make_llama
from nanogpt import make_gpt
from test_llama import save_llama2c
from test_tokenizer import SHAKESPEARE, save_nanogpt, tf4_python, tiktoken_gpt2, write_meta_pkl

from hfexport import convert_checkpoint, export_hf

pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("tiktoken")

REPO = Path(__file__).resolve().parents[1]
MODEL = {**TINY, "block_size": 128}
KINDS = ("gpt2", "bpe", "char", "sentencepiece", "tiktoken")
TEXT = "Once upon a time, the quick brown fox said: 'I've 42 ideas.'\nThe end  of  it, café 🙂"
#: The character-level export knows only the characters of its training text.
CHAR_TEXT = "First Citizen:\nSpeak, speak. Before we proceed any further"
SPM_CORPUS = "\n".join(
    f"Once upon a time there was a little {who} who liked to play {what} in park number {i}."
    for i, (who, what) in enumerate([("girl", "ball"), ("boy", "games"), ("dog", "fetch"), ("cat", "chess")] * 25)
)


def text_for(kind: str) -> str:
    return CHAR_TEXT if kind == "char" else TEXT


def train_sentencepiece(folder: Path) -> Path:
    """A 320-piece BPE sentencepiece model trained as llama2.c's train_vocab does (byte fallback, digits split)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text(SPM_CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tokenizer"),
        model_type="bpe",
        vocab_size=320,
        character_coverage=1.0,
        num_threads=1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        unk_surface=r" \342\201\207 ",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return folder / "tokenizer.model"


def example_tokenizer(monkeypatch: pytest.MonkeyPatch) -> object:
    """The example's byte-level BPE (examples/data/tokenizer.json) as ``examples/train_gpt2.py`` builds it."""
    spec = importlib.util.spec_from_file_location("train_gpt2", REPO / "examples" / "train_gpt2.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_gpt2", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.get_tokenizer(16)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One export per tokenizer kind, each made the way a user makes it."""
    root = tmp_path_factory.mktemp("consumers")
    out: dict[str, Path] = {}
    out["gpt2"] = export_hf(make_gpt(1, **{**MODEL, "vocab_size": 50304}), 1, root / "gpt2", tokenizer="gpt2")
    with pytest.MonkeyPatch.context() as monkeypatch:
        tok = example_tokenizer(monkeypatch)
    out["bpe"] = export_hf(make_gpt(2, **{**MODEL, "vocab_size": 1024}), 1, root / "bpe", tokenizer=tok)
    # nanoGPT's shakespeare_char layout: data/<dataset>/meta.pkl, out-x/ckpt.pt; the vocabulary has no spare row
    meta = write_meta_pkl(root / "nanoGPT" / "data" / "shakespeare_char", SHAKESPEARE)
    gpt = make_gpt(3, **{**MODEL, "vocab_size": int(meta["vocab_size"])})  # type: ignore[call-overload]
    ckpt = save_nanogpt(gpt, root / "nanoGPT" / "out-char" / "ckpt.pt", "shakespeare_char")
    out["char"] = convert_checkpoint(ckpt, root / "char")
    llama = root / "llama2c"
    model_file = train_sentencepiece(llama)
    save_llama2c(make_llama(4, vocab_size=320, max_seq_len=128), llama / "ckpt.pt")
    assert model_file == llama / "tokenizer.model"
    out["sentencepiece"] = convert_checkpoint(llama / "ckpt.pt", root / "sentencepiece")
    out["tiktoken"] = export_hf(
        make_gpt(5, **{**MODEL, "vocab_size": 50257}), 1, root / "tiktoken", tokenizer=tiktoken_gpt2()
    )
    return {kind: Path(path).resolve() for kind, path in out.items()}


TF4_PROBE = """
import json, sys
import transformers
from transformers import AutoTokenizer
out = {}
for directory, text in zip(sys.argv[1::2], sys.argv[2::2]):
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    enc = tok(text)
    batch = tok([text, text[: len(text) // 2]])
    out[directory] = {
        "transformers": transformers.__version__,
        "keys": sorted(enc.keys()),
        "batch_keys": sorted(batch.keys()),
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "model_max_length": tok.model_max_length,
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tf4_encodings(exports: dict[str, Path]) -> dict[str, dict]:
    """What transformers 4.x's ``AutoTokenizer`` gives each export's text (one subprocess for all kinds)."""
    python = tf4_python()
    if python is None:
        pytest.skip("no transformers 4.x interpreter (.venv-tf4, or HFEXPORT_TF4_PYTHON)")
    args = [item for kind in KINDS for item in (str(exports[kind]), text_for(kind))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [python, "-c", TF4_PROBE, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    return {kind: result[str(exports[kind])] for kind in KINDS}


# -------------------------------------------------------------------------------------------- item 1: inputs
@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_output_gives_the_logits_of_the_ids_under_transformers_5(exports: dict[str, Path], kind: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(exports[kind]))
    model = AutoModelForCausalLM.from_pretrained(str(exports[kind]), dtype=torch.float32).eval()
    enc = tok(text_for(kind), return_tensors="pt")
    assert sorted(enc.keys()) == ["attention_mask", "input_ids"]
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, model(enc["input_ids"]).logits)
        generated = model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert generated.shape[1] == enc["input_ids"].shape[1] + 2


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_output_is_input_ids_and_attention_mask_under_transformers_4(
    exports: dict[str, Path], tf4_encodings: dict[str, dict], kind: str
) -> None:
    """No ``token_type_ids`` under 4.x: ``model(**tok(x))`` is then ``model(input_ids)`` (an all-ones mask), the
    ids are 5.x's, and a Llama's / ONNX Runtime's ``generate(**enc)`` gets only arguments it takes."""
    from transformers import AutoTokenizer

    old = tf4_encodings[kind]
    assert old["transformers"].startswith("4."), old["transformers"]
    assert old["keys"] == old["batch_keys"] == ["attention_mask", "input_ids"]
    assert set(old["attention_mask"]) == {1}
    assert old["input_ids"] == AutoTokenizer.from_pretrained(str(exports[kind]))(text_for(kind))["input_ids"]


def test_verify_reports_a_tokenizer_that_returns_token_type_ids_under_transformers_4(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    """An export written before ``model_input_names`` (or edited since) fails ``hfexport verify``."""
    from hfexport import verify_directory

    out = tmp_path / "bpe"
    shutil.copytree(exports["bpe"], out)
    (out / "hfexport.json").unlink()  # the manifest's checksums would report the edit first
    assert verify_directory(out).ok, verify_directory(out).problems
    settings = json.loads((out / "tokenizer_config.json").read_text())
    assert settings["model_input_names"] == ["input_ids", "attention_mask"]
    del settings["model_input_names"]
    (out / "tokenizer_config.json").write_text(json.dumps(settings))
    problems = verify_directory(out).problems
    assert any("without model_input_names" in p and "token_type_ids" in p for p in problems), problems
