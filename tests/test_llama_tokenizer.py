"""Tokenizers of Llama-style sources: a sentencepiece ``tokenizer.model`` (llama2.c, Meta's Llama 2) becomes a
tokenizer ``AutoTokenizer`` loads with llama2.c's ids; litgpt's tokenizer files are copied; a Llama 3 tiktoken
``tokenizer.model`` is refused when asked for and skipped (with a warning) when merely found.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch
from llama_ref import make_litllama, make_llama
from test_llama import save_litgpt, save_llama2c

from hfexport import HFExportError, convert_checkpoint, verify_directory
from hfexport.cli import main

spm = pytest.importorskip("sentencepiece")
TEXTS = [
    "Once upon a time, a little robot 42 played ü ball.\nThe end  of  it",
    "Tom and Lily went to the park. They saw a big dog!",
    "日本語 🙂 x",
]
CORPUS = "\n".join(
    f"Once upon a time there was a little {who} who liked to play {what} in park number {i}."
    for i, (who, what) in enumerate([("girl", "ball"), ("boy", "games"), ("dog", "fetch"), ("cat", "chess")] * 25)
)


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320-piece BPE sentencepiece model trained as llama2.c's train_vocab does (byte fallback, digits split)."""
    folder = tmp_path_factory.mktemp("spm")
    (folder / "corpus.txt").write_text(CORPUS)
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
        remove_extra_whitespaces=False,  # as Llama 2's tokenizer: runs of spaces are kept
        minloglevel=2,
    )
    return folder / "tokenizer.model"


def assert_llama2c_ids(directory: Path, model_file: Path) -> None:
    """The export's tokenizer gives llama2.c's ``Tokenizer.encode(s, bos=True, eos=False)`` ids, and decodes back."""
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    tok = AutoTokenizer.from_pretrained(str(directory))
    assert (tok.bos_token_id, tok.eos_token_id) == (sp.bos_id(), sp.eos_id()) == (1, 2)
    for text in TEXTS:
        ids = tok(text).input_ids
        assert ids == [sp.bos_id(), *sp.encode(text)], text
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_model_beside_a_llama2c_checkpoint_is_converted(tmp_path: Path, sp_model: Path) -> None:
    model = make_llama(0, vocab_size=320)
    ckpt = save_llama2c(model, tmp_path / "ckpt.pt")
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    out = convert_checkpoint(ckpt, tmp_path / "hf")
    assert (out / "tokenizer.json").is_file()
    assert_llama2c_ids(out, sp_model)
    assert verify_directory(out).ok  # the tokenizer loads, fits the 320 rows, bos/eos agree with config.json


def test_tokenizer_option_with_a_sentencepiece_file(tmp_path: Path, sp_model: Path) -> None:
    ckpt = save_llama2c(make_llama(0, vocab_size=320), tmp_path / "ckpt.pt")
    args = ["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--tokenizer", str(sp_model), "-q"]
    assert main(args) == 0
    assert (tmp_path / "hf" / "tokenizer.json").is_file()  # converted, not the .model file copied as it is
    assert_llama2c_ids(tmp_path / "hf", sp_model)


def test_llama3_tiktoken_file_is_refused_when_given_and_skipped_when_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    ckpt = save_llama2c(make_llama(0), tmp_path / "ckpt.pt")
    (tmp_path / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")  # the tiktoken format of Llama 3
    args = ["convert", str(ckpt), "--output_dir", str(tmp_path / "a"), "--tokenizer", str(tmp_path / "tokenizer.model")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a sentencepiece model" in err[0] and "tiktoken" in err[0]
    assert not (tmp_path / "a").exists()
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        out = convert_checkpoint(ckpt, tmp_path / "b")
    assert "found beside the checkpoint: not a sentencepiece model (Llama 3's is a tiktoken file)" in caplog.text
    assert not list(out.glob("tokenizer*"))


def test_litgpt_tokenizer_beside_lit_model_is_used(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer

    vocab = {
        "<unk>": 0,
        "<s>": 1,
        "</s>": 2,
        **{w: i + 3 for i, w in enumerate(["the", "cat", "sat", "on", "a", "mat"])},
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    final = tmp_path / "final"
    ckpt = save_litgpt(make_litllama(0), final)
    backend.save(str(final / "tokenizer.json"))
    (final / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}')
    (final / "hyperparameters.yaml").write_text("lr: 0.1\n")
    out = convert_checkpoint(ckpt, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("the cat sat on a mat").input_ids == backend.encode("the cat sat on a mat").ids
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert not (out / "lit_model.pth").exists() and not (out / "hyperparameters.yaml").exists()
    assert not (out / "model_config.yaml").exists()
    manifest = json.loads((out / "hfexport.json").read_text())  # found, not named: said in manifest and card
    assert manifest["inferred"]["tokenizer"] == "tokenizer.json beside the checkpoint; its ids fit the vocabulary"
    assert "| inferred tokenizer | tokenizer.json beside the checkpoint" in (out / "README.md").read_text()


def test_sentencepiece_found_beside_a_checkpoint_is_recorded_and_must_match_exactly(
    tmp_path: Path, sp_model: Path
) -> None:
    """llama2.c trains the embedding with the sentencepiece model's size: a 320-piece model found beside a
    384-row checkpoint is another model's (named with --tokenizer, fitting is enough)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ckpt = save_llama2c(make_llama(0, vocab_size=320), tmp_path / "a" / "ckpt.pt")
    shutil.copy(sp_model, tmp_path / "a" / "tokenizer.model")
    out = convert_checkpoint(ckpt, tmp_path / "hf")
    inferred = json.loads((out / "hfexport.json").read_text())["inferred"]["tokenizer"]
    assert inferred == "tokenizer.model beside the checkpoint; its size equals the vocabulary's rows"
    bigger = save_llama2c(make_llama(0, vocab_size=384), tmp_path / "b" / "ckpt.pt")
    shutil.copy(sp_model, tmp_path / "b" / "tokenizer.model")
    with pytest.raises(HFExportError, match="has 320 token ids but the model's vocabulary has 384 rows"):
        convert_checkpoint(bigger, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    named = convert_checkpoint(bigger, tmp_path / "named", tokenizer=tmp_path / "b" / "tokenizer.model")
    assert "inferred" not in json.loads((named / "hfexport.json").read_text())


def test_gpt2_checkpoints_ignore_a_tokenizer_model_beside_them(tmp_path: Path, sp_model: Path) -> None:
    from nanogpt import make_gpt

    gpt = make_gpt(0)
    torch.save({"model": gpt.state_dict(), "model_args": gpt.model_args(), "iter_num": 1}, tmp_path / "ckpt.pt")
    shutil.copy(sp_model, tmp_path / "tokenizer.model")
    out = convert_checkpoint(tmp_path / "ckpt.pt", tmp_path / "hf")
    assert not list(out.glob("tokenizer*"))


def test_transformers_4_loads_the_converted_sentencepiece_tokenizer(tmp_path: Path, sp_model: Path) -> None:
    """The converted tokenizer loads under transformers 4.x exactly as under 5.x (CI's ``.venv-tf4``)."""
    from test_tokenizer import run_probe, tf4_python

    python = tf4_python()
    if python is None:
        pytest.skip("no transformers 4.x interpreter (.venv-tf4, or HFEXPORT_TF4_PYTHON)")
    ckpt = save_llama2c(make_llama(0, vocab_size=320), tmp_path / "ckpt.pt")
    out = convert_checkpoint(ckpt, tmp_path / "hf", tokenizer=sp_model)
    old, new = run_probe(python, [out], tmp_path)[str(out)], run_probe(sys.executable, [out], tmp_path)[str(out)]
    assert old["transformers"].startswith("4.")
    for key in ("len", "eos_token_id", "bos_token_id", "ids", "decoded"):
        assert old[key] == new[key], key
    assert old["bos_token_id"] == 1 and old["ids"][0] == 1
