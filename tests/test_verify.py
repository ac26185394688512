"""verify_directory: sound exports pass, every kind of damage is reported (never raised), logits are compared."""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import pytest
import torch
from nanogpt import make_gpt
from safetensors.torch import load_file, save_file

from hfexport import convert_checkpoint, verify_directory
from hfexport.verify import nanogpt_forward


@pytest.fixture
def export(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module]:
    model = make_gpt(11, vocab_size=80)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args(), "iter_num": 10}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    return out, ckpt, model


def test_fresh_export_is_ok(export: tuple[Path, Path, torch.nn.Module]) -> None:
    out, _, _ = export
    report = verify_directory(out)
    assert report.ok, report.problems
    assert report.tensors == 12 * 2 + 4
    manifest = json.loads((out / "hfexport.json").read_text())
    assert report.files_checked == len(manifest["files"])
    assert report.max_logit_diff is None


def test_logits_against_checkpoint(export: tuple[Path, Path, torch.nn.Module]) -> None:
    out, ckpt, _ = export
    report = verify_directory(out, checkpoint=ckpt)
    assert report.ok, report.problems
    assert report.max_logit_diff is not None
    assert report.max_logit_diff <= 1e-5


def test_reference_forward_matches_nanogpt() -> None:
    """The verifier's independent forward is nanoGPT's, for every GELU."""
    for activation in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        model = make_gpt(12, activation=activation, bias=False)
        ids = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            want = model(ids)
        got = nanogpt_forward(dict(model.state_dict()), ids, n_head=4, activation=activation)
        assert float((got - want).abs().max()) <= 1e-5, activation


def _corrupt_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - 100] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "rb+") as fh:
        fh.truncate(path.stat().st_size - 64)


DAMAGE = {
    "flipped_byte": (lambda d: _corrupt_byte(d / "model.safetensors"), "CRC-32"),
    "truncated": (lambda d: _truncate(d / "model.safetensors"), "truncated"),
    "truncated_to_nothing": (lambda d: (d / "model.safetensors").write_bytes(b"\x01"), "not a safetensors file"),
    "config_deleted": (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    "config_garbage": (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    "weights_deleted": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "manifest_file_gone": (lambda d: (d / "README.md").unlink(), "README.md is listed"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damage_is_reported(export: tuple[Path, Path, torch.nn.Module], case: str) -> None:
    out, ckpt, _ = export
    damage, words = DAMAGE[case]
    damage(out)
    report = verify_directory(out, checkpoint=ckpt)
    assert not report.ok
    assert any(words in p for p in report.problems), report.problems
    assert report.max_logit_diff is None  # no logits compared on a damaged directory


def test_manifest_checksums_crc32_and_earlier_sha256(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """Manifests carry CRC-32s; the SHA-256s of manifests from earlier development versions are still checked."""
    out, _, _ = export
    path = out / "hfexport.json"
    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        assert entry["crc32"] == f"{zlib.crc32((out / name).read_bytes()):08x}", name
        entry.pop("crc32")
        entry["sha256"] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    path.write_text(json.dumps(manifest))
    assert verify_directory(out).ok
    _corrupt_byte(out / "model.safetensors")
    report = verify_directory(out)
    assert report.problems == ["model.safetensors: SHA-256 differs from the manifest (the file changed or is corrupt)"]
    for entry in manifest["files"].values():
        entry.pop("sha256")
    path.write_text(json.dumps(manifest))
    assert "config.json: no checksum in the manifest" in verify_directory(out).problems


def _rewrite_weights(out: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Tamper with the weights consistently (a valid file, no manifest): only the logits can tell."""
    tensors = load_file(str(out / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.remove(out / "hfexport.json")


def test_untransposed_c_proj_is_flagged(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """attn.c_proj is square: a missed transpose loads without error; only the reference forward catches it."""
    out, ckpt, _ = export

    def untranspose(t: dict[str, torch.Tensor]) -> None:
        t["transformer.h.1.attn.c_proj.weight"] = t["transformer.h.1.attn.c_proj.weight"].t().contiguous()

    _rewrite_weights(out, untranspose)
    assert verify_directory(out).ok  # structurally sound
    report = verify_directory(out, checkpoint=ckpt)
    assert not report.ok
    assert report.max_logit_diff is not None and report.max_logit_diff > 1e-3
    assert any("logit diff" in p for p in report.problems)


def test_wrong_activation_is_flagged(tmp_path: Path) -> None:
    """An export that claims the wrong GELU: the reference forward (with the true GELU) disagrees."""
    model = make_gpt(13, activation="gelu_new")
    with torch.no_grad():
        for block in model.transformer.h:  # larger pre-activations make the GELU variants differ clearly
            block.mlp.c_fc.weight.mul_(10)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", activation="gelu")
    right = verify_directory(out, checkpoint=ckpt, activation="gelu")  # consistent with the (wrong) claim
    assert right.ok and right.max_logit_diff is not None and right.max_logit_diff <= 1e-5
    wrong = verify_directory(out, checkpoint=ckpt, activation="gelu_new")
    assert not wrong.ok
    assert wrong.max_logit_diff is not None and wrong.max_logit_diff > 1e-4


def test_config_disagreeing_with_weights(export: tuple[Path, Path, torch.nn.Module]) -> None:
    out, _, _ = export
    config = json.loads((out / "config.json").read_text())
    config["n_layer"] = 3
    config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config))
    report = verify_directory(out)
    assert any("n_layer=3" in p for p in report.problems), report.problems
    assert any("lm_head.weight is missing" in p for p in report.problems), report.problems
    assert any(p.startswith("config.json: size") for p in report.problems), report.problems


def test_bfloat16_export_within_default_tolerance(tmp_path: Path) -> None:
    model = make_gpt(14)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf")  # bfloat16 by default
    report = verify_directory(out, checkpoint=ckpt)
    assert report.ok, report.problems
    assert 0 < report.max_logit_diff < 0.5


def test_sharded_export_verifies_and_detects_missing_shard(tmp_path: Path) -> None:
    model = make_gpt(15)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", max_shard_size="20KB")
    assert verify_directory(out, checkpoint=ckpt).ok
    victim = sorted(out.glob("model-*.safetensors"))[1]
    victim.unlink()
    report = verify_directory(out)
    assert any(f"{victim.name} (named in the index) is missing" in p for p in report.problems), report.problems


def test_not_a_directory(tmp_path: Path) -> None:
    report = verify_directory(tmp_path / "nothing")
    assert not report.ok
    assert "is not a directory" in report.problems[0]


# --- the tokenizer (issue 11) ---------------------------------------------------------------------------------
def _char_tokenizer(chars: str = "abcdefgh") -> object:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={c: i for i, c in enumerate(chars)}, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="h")


def _without_manifest(tmp_path: Path, **options: object) -> Path:
    """An export whose files may be edited without the manifest's checksums reporting it first."""
    model = make_gpt(11, vocab_size=80)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args(), "iter_num": 10}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", **options)
    (out / "hfexport.json").unlink()
    return out


def test_tokenizer_of_an_export_is_checked_and_sound(tmp_path: Path) -> None:
    out = _without_manifest(tmp_path, tokenizer=_char_tokenizer())
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 7
    assert verify_directory(out).ok, verify_directory(out).problems


@pytest.mark.parametrize("case", ["backend_class", "config_only", "eos_mismatch", "too_big", "symlink_out"])
def test_tokenizer_defects_are_reported(tmp_path: Path, case: str) -> None:
    out = _without_manifest(tmp_path, tokenizer=_char_tokenizer())
    if case == "backend_class":  # what transformers 5's save_pretrained writes
        _char_tokenizer().save_pretrained(str(out))
        expected = "TokenizersBackend"
    elif case == "config_only":
        (out / "tokenizer.json").unlink()
        expected = "loads as an empty tokenizer"
    elif case == "eos_mismatch":
        config = json.loads((out / "config.json").read_text())
        config["eos_token_id"] = 3
        (out / "config.json").write_text(json.dumps(config))
        expected = "config.json says eos_token_id=3, the tokenizer's is 7"
    elif case == "too_big":
        _char_tokenizer("".join(chr(200 + i) for i in range(90))).save_pretrained(str(tmp_path / "big"))
        (out / "tokenizer.json").write_bytes((tmp_path / "big" / "tokenizer.json").read_bytes())
        expected = "the tokenizer has 91 token ids but config.json's vocab_size is 80"  # 90 + the added "h"
    else:
        (tmp_path / "elsewhere.json").write_bytes((out / "tokenizer.json").read_bytes())
        (out / "tokenizer.json").unlink()
        (out / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
        expected = "outside the directory"
    problems = verify_directory(out).problems
    assert any(expected in p for p in problems), problems
