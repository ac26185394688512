"""Exports read by the tools people feed them to, one export per tokenizer kind hfexport writes.

The kinds: GPT-2's BPE, a custom byte-level BPE (the example's), nanoGPT's character-level ``meta.pkl``, a
sentencepiece ``tokenizer.model`` (a llama2.c Llama) and a ``tiktoken.Encoding``. The consumers:

Consumers that are not installed make their tests skip, unless ``HFEXPORT_REQUIRE_CONSUMERS=1`` (set by
``.ci/run``, which installs them) makes their absence a failure:

* llama.cpp's ``convert_hf_to_gguf.py`` (from the llama-cpp-python 0.3.36 sdist, with its ``conversion/`` and
  ``gguf-py/``; ``.ci/run`` unpacks them into ``.consumers/llama.cpp``, or set ``HFEXPORT_LLAMA_CPP``), run by this
  interpreter (it needs torch, and reads tokenizers through transformers);
* lm-evaluation-harness (``lm_eval.simple_evaluate`` with ``--model hf``'s defaults, on tasks written here, offline);
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


def require_consumer(what: str) -> None:
    """Skip (locally) or fail (CI: ``HFEXPORT_REQUIRE_CONSUMERS=1``) when a consumer is missing."""
    if os.environ.get("HFEXPORT_REQUIRE_CONSUMERS") == "1":
        pytest.fail(f"HFEXPORT_REQUIRE_CONSUMERS=1 but {what}")
    pytest.skip(what)


def llama_cpp_dir() -> Path:
    """llama.cpp's converter: ``HFEXPORT_LLAMA_CPP``, else ``.consumers/llama.cpp`` (what ``.ci/run`` unpacks)."""
    for candidate in (os.environ.get("HFEXPORT_LLAMA_CPP"), REPO / ".consumers" / "llama.cpp"):
        if candidate and (Path(candidate) / "convert_hf_to_gguf.py").is_file():
            return Path(candidate)
    require_consumer("no llama.cpp convert_hf_to_gguf.py (.consumers/llama.cpp, or HFEXPORT_LLAMA_CPP)")
    raise AssertionError  # unreachable


GGUF_READER = """
import json, sys
import gguf
reader = gguf.GGUFReader(sys.argv[1])
def strings(key):
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
def numbers(key):
    field = reader.fields[key]
    return [field.parts[i].tolist()[0] for i in field.data]
print(json.dumps({
    "model": strings("tokenizer.ggml.model")[0],
    "pre": strings("tokenizer.ggml.pre")[0] if "tokenizer.ggml.pre" in reader.fields else None,
    "tokens": strings("tokenizer.ggml.tokens"),
    "scores": numbers("tokenizer.ggml.scores") if "tokenizer.ggml.scores" in reader.fields else None,
    "token_type": numbers("tokenizer.ggml.token_type"),
}))
"""


def run_llama_cpp_converter(directory: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """llama.cpp's ``convert_hf_to_gguf.py --vocab-only`` on ``directory``, offline; the finished process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run(
        [
            *(sys.executable, str(llama_cpp_dir() / "convert_hf_to_gguf.py"), str(directory)),
            *("--outfile", str(out), "--vocab-only"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def gguf_vocabulary(directory: Path, tmp_path: Path) -> dict:
    """Convert ``directory``'s vocabulary with llama.cpp's converter and read it back from the GGUF."""
    llama_cpp = llama_cpp_dir()
    out = tmp_path / f"{directory.name}.gguf"
    proc = run_llama_cpp_converter(directory, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(llama_cpp / "gguf-py")}
    proc = subprocess.run(
        [sys.executable, "-c", GGUF_READER, str(out)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


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


# -------------------------------------------------------------------------------------------- item 2: sentencepiece
def test_a_llama_export_ships_the_sentencepiece_model_it_was_converted_from(exports: dict[str, Path]) -> None:
    out = exports["sentencepiece"]
    shipped = out / "tokenizer.model"
    assert shipped.is_file() and not shipped.is_symlink()
    source = (out.parent / "llama2c" / "tokenizer.model").read_bytes()
    assert shipped.read_bytes() == source
    manifest = json.loads((out / "hfexport.json").read_text())
    assert manifest["files"]["tokenizer.model"]["size"] == len(source)
    from hfexport import verify_directory

    assert verify_directory(out).ok


def test_llama_cpp_gguf_carries_sentencepiece_scores(exports: dict[str, Path], tmp_path: Path) -> None:
    """Without tokenizer.model the converter reads tokenizer.json alone: one placeholder score (-1000) for every
    token, and llama.cpp then tokenizes differently from sentencepiece (" or" → "▁o r")."""
    out = exports["sentencepiece"]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    vocab = gguf_vocabulary(out, tmp_path)
    assert vocab["model"] == "llama"
    assert vocab["tokens"] == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert vocab["scores"] == pytest.approx([sp.get_score(i) for i in range(sp.get_piece_size())])
    assert len(set(vocab["scores"])) > 50  # real scores, not one placeholder


def test_a_tokenizer_directory_ships_its_matching_sentencepiece_model_only(
    exports: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory with tokenizer.json + tokenizer.model (litgpt's, a Llama 2 repository): the model is shipped when
    its pieces are tokenizer.json's tokens at the same ids, never another one."""
    import logging

    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"):
        shutil.copy(exports["sentencepiece"] / name, folder / name)
    model = make_gpt(6, **{**MODEL, "vocab_size": 320})
    same = export_hf(model, 1, tmp_path / "same", tokenizer=folder)
    assert (same / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    other = train_sentencepiece_other(tmp_path / "other")
    shutil.copy(other, folder / "tokenizer.model")
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        different = export_hf(model, 1, tmp_path / "different", tokenizer=folder)
    assert not (different / "tokenizer.model").exists()
    assert "is not the model that tokenizer was made from" in caplog.text
    (folder / "tokenizer.model").unlink()
    (folder / "tokenizer.model").symlink_to(tmp_path / "same" / "tokenizer.model")  # leaves the directory
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        linked = export_hf(model, 1, tmp_path / "linked", tokenizer=folder)
    assert not (linked / "tokenizer.model").exists()
    assert "Not shipping tokenizer.model" in caplog.text and "symlink" in caplog.text


def train_sentencepiece_other(folder: Path) -> Path:
    """Another sentencepiece model (another corpus, the same size): its pieces sit at other ids."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = "\n".join(f"Zebras {i} quietly jog over lazy brown dwarves, vexing kings by night." for i in range(80))
    (folder / "corpus.txt").write_text(corpus)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tokenizer"),
        model_type="bpe",
        vocab_size=320,
        character_coverage=1.0,
        num_threads=1,
        byte_fallback=True,
        minloglevel=2,
    )
    return folder / "tokenizer.model"


# -------------------------------------------------------------------------------------------- item 3: characters
def test_a_character_outside_the_training_text_encodes_without_error(exports: dict[str, Path]) -> None:
    """It is dropped (the model has no row for it); the known characters keep meta.pkl's ids."""
    from transformers import AutoTokenizer

    out = exports["char"]
    tok = AutoTokenizer.from_pretrained(str(out))
    meta = write_meta_pkl(out.parent / "again", SHAKESPEARE)
    stoi: dict[str, int] = meta["stoi"]  # type: ignore[assignment]
    text = "Speak, café 🙂 Zebra\nfirst"
    known = "".join(c for c in text if c in stoi)
    assert known != text
    assert tok(text)["input_ids"] == tok(known)["input_ids"] == [stoi[c] for c in known]
    assert tok.decode(tok(known)["input_ids"], skip_special_tokens=False) == known
    assert (tok.bos_token, tok.eos_token) == ("\n", "\n")
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == stoi["\n"]
    assert "eos_token_id" not in generation  # nanoGPT's sampling never stopped at a newline
    card = (out / "README.md").read_text()
    assert "dropped when encoding" in card and "skip_special_tokens=False" in card
    from hfexport import verify_directory

    assert verify_directory(out).ok, verify_directory(out).problems


def test_transformers_generation_does_not_stop_at_the_character_level_newline(exports: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exports["char"]
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    newline = tok.convert_tokens_to_ids("\n")
    assert model.generation_config.eos_token_id is None
    with torch.no_grad():  # the newline becomes the likeliest next character everywhere (tied embeddings)
        model.lm_head.weight[newline] *= 10
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(model.lm_head.weight[newline])
        enc = tok("Speak", return_tensors="pt")
        generated = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert generated[0, enc["input_ids"].shape[1] :].tolist() == [newline] * 5


def test_llama_cpp_converter_reads_a_character_level_export_without_missing_unk(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    """llama.cpp's converter tokenizes its check text (all kinds of characters) before it decides: it used to crash
    there ("Missing [UNK] token"); now it gets the ids and says it does not know this pre-tokenizer."""
    proc = run_llama_cpp_converter(exports["char"], tmp_path / "char.gguf")
    assert "Missing [UNK]" not in proc.stderr, proc.stderr[-3000:]
    assert "BPE pre-tokenizer was not recognized" in proc.stderr, proc.stderr[-3000:]


LM_EVAL_TASKS = {
    "hfexport_chars_mc": """
task: hfexport_chars_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
""",
    "hfexport_chars_gen": """
task: hfexport_chars_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""",
}
LM_EVAL_DOCS = [
    {"context": "First Citizen:\nBefore we proceed", "choices": [" any further", " anywhere"], "label": 0},
    {"context": "All:\nSpeak, ", "choices": ["speak.", "café 🙂"], "label": 0},  # é and 🙂 are not in the text
    {"context": "", "choices": ["First", "Zebra"], "label": 0},  # an empty context: lm-eval's prefix is bos
]
LM_EVAL_SCRIPT = """
import json, sys
import lm_eval
from lm_eval.tasks import TaskManager
results = lm_eval.simple_evaluate(
    model="hf",
    model_args="pretrained=" + sys.argv[1],
    tasks=["hfexport_chars_mc", "hfexport_chars_gen"],
    task_manager=TaskManager(include_path=sys.argv[2]),
    device="cpu",
)
print(json.dumps({name: sorted(values) for name, values in results["results"].items()}))
"""


def test_lm_eval_runs_on_a_character_level_export_with_no_extra_arguments(
    exports: dict[str, Path], tmp_path: Path
) -> None:
    if importlib.util.find_spec("lm_eval") is None or importlib.util.find_spec("accelerate") is None:
        require_consumer("lm-eval with its hf extra is not installed (pip install 'lm-eval[hf]==0.4.13')")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, template in LM_EVAL_TASKS.items():
        # generate_until with an empty context fails on any causal model that adds no bos (GPT-2's too)
        docs = [doc for doc in LM_EVAL_DOCS if doc["context"] or name.endswith("_mc")]
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
        (tasks / f"{name}.yaml").write_text(template.format(data=json.dumps(str(data))))
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env = {**os.environ, **offline, "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LM_EVAL_SCRIPT, str(exports["char"]), str(tasks)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    assert "acc,none" in results["hfexport_chars_mc"], results
    assert "exact_match,none" in results["hfexport_chars_gen"], results


# -------------------------------------------------------------------------------------------- item 4: facts
def test_every_export_gets_the_model_context_as_model_max_length(exports: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    for kind in KINDS:
        config = json.loads((exports[kind] / "config.json").read_text())
        context = config.get("n_positions") or config["max_position_embeddings"]
        assert AutoTokenizer.from_pretrained(str(exports[kind])).model_max_length == context == 128, kind


def test_card_and_manifest_describe_a_tokenizer_object(exports: dict[str, Path]) -> None:
    """The example's tokenizer object is no "TokenizersBackend object" (transformers 5's name for every fast one)."""
    manifest = json.loads((exports["bpe"] / "hfexport.json").read_text())
    card = (exports["bpe"] / "README.md").read_text()
    assert manifest["tokenizer"] == "transformers tokenizer object (byte-level BPE, 1024 tokens)"
    assert f"| tokenizer | {manifest['tokenizer']} |" in card
    assert "TokenizersBackend" not in card + json.dumps(manifest)


def test_the_llama2c_whitespace_warning_is_recorded_in_card_and_manifest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """llama2.c's train_vocab leaves remove_extra_whitespaces on: the converted tokenizer keeps runs of spaces."""
    import logging

    folder = tmp_path / "llama2c"
    folder.mkdir()
    (folder / "corpus.txt").write_text(SPM_CORPUS)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "tokenizer"),
        model_type="bpe",
        vocab_size=320,
        character_coverage=1.0,
        num_threads=1,
        byte_fallback=True,
        minloglevel=2,
    )  # remove_extra_whitespaces defaults to true, as in llama2.c's train_vocab
    save_llama2c(make_llama(7, vocab_size=320, max_seq_len=128), folder / "ckpt.pt")
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        out = convert_checkpoint(folder / "ckpt.pt", tmp_path / "hf")
    assert "collapses runs of whitespace" in caplog.text
    manifest = json.loads((out / "hfexport.json").read_text())
    assert any("collapses runs of whitespace" in note for note in manifest["tokenizer_notes"])
    assert "collapses runs of whitespace" in (out / "README.md").read_text()


# -------------------------------------------------------------------------------------------- item 5: llama.cpp
@pytest.mark.parametrize("kind", ["gpt2", "tiktoken"])
def test_llama_cpp_recognises_gpt2s_own_vocabulary(exports: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """What the README says of llama.cpp's converter: GPT-2's BPE (also as tiktoken's gpt2) has a hash it knows."""
    vocab = gguf_vocabulary(exports[kind], tmp_path)
    assert (vocab["model"], vocab["pre"], vocab["tokens"][50256]) == ("gpt2", "gpt-2", "<|endoftext|>")


def test_llama_cpp_refuses_a_custom_bpe_as_an_unknown_pre_tokenizer(exports: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp's limitation, named in the README: a BPE it has no hash for is refused."""
    proc = run_llama_cpp_converter(exports["bpe"], tmp_path / "bpe.gguf")
    assert proc.returncode != 0
    assert "BPE pre-tokenizer was not recognized" in proc.stderr, proc.stderr[-3000:]
