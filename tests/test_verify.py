"""verify_directory: sound exports pass, every kind of damage is reported (never raised), logits are compared."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from nanogpt import make_gpt
from safetensors.torch import load_file, save_file

from hfexport import convert_checkpoint, verify_directory
from hfexport.errors import MissingFactError
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


def test_a_checkpoint_without_its_heads_is_a_missing_fact(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """verify never takes the heads from the export it checks: a bare state dict needs n_head, and the refusal says
    which fact by its type and attribute (callers never match its text)."""
    out, _, model = export
    bare = out.parent / "bare.pt"
    torch.save(model.state_dict(), bare)  # no model_args: nothing records n_head
    with pytest.raises(MissingFactError) as info:
        verify_directory(out, checkpoint=bare)
    assert info.value.fact == "n_head" and info.value.facts == ("n_head",)
    assert isinstance(info.value, ValueError) and "--n_head" in str(info.value)
    assert verify_directory(out, checkpoint=bare, n_head=4).ok


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
    "truncated_to_nothing": (lambda d: (d / "model.safetensors").write_bytes(b"\x01"), "not a valid safetensors file"),
    "config_deleted": (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    "config_garbage": (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
    "weights_deleted": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "manifest_file_gone": (lambda d: (d / "README.md").unlink(), "README.md (listed in hfexport.json) is missing"),
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


def test_manifest_checksums_are_crc32(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """Manifests carry CRC-32s; a file whose entry has none (an old SHA-256 manifest) is a problem, not skipped."""
    out, _, _ = export
    path = out / "hfexport.json"
    manifest = json.loads(path.read_text())
    for name, entry in manifest["files"].items():
        assert entry["crc32"] == f"{zlib.crc32((out / name).read_bytes()):08x}", name
    _corrupt_byte(out / "model.safetensors")
    report = verify_directory(out)
    assert report.problems == ["model.safetensors: CRC-32 differs from the manifest (the file changed or is corrupt)"]
    for name, entry in manifest["files"].items():
        entry.pop("crc32")
        entry["sha256"] = hashlib.sha256((out / name).read_bytes()).hexdigest()
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
    assert any(f"{victim.name} (named in model.safetensors.index.json) is missing" in p for p in report.problems), (
        report.problems
    )


def test_not_a_directory(tmp_path: Path) -> None:
    report = verify_directory(tmp_path / "nothing")
    assert not report.ok
    assert "is not a directory" in report.problems[0]


# --- issue 9, item 9: nothing unsound is called sound, nothing outside DIR is opened, nothing crashes -------------


def _edit_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Rewrite a safetensors header in place (the data section is kept, the header padded to 8 bytes)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + size :])


def _tensors_by_offset(header: dict) -> list[str]:  # type: ignore[type-arg]
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _alias(header: dict) -> None:  # type: ignore[type-arg]
    """Two same-sized tensors share their bytes (a gap is left where the second one was)."""
    names = _tensors_by_offset(header)
    size = {k: header[k]["data_offsets"][1] - header[k]["data_offsets"][0] for k in names}
    first = next(a for i, a in enumerate(names) if any(size[b] == size[a] for b in names[i + 1 : -1]))
    second = next(b for b in names[names.index(first) + 1 : -1] if size[b] == size[first])
    header[second]["data_offsets"] = list(header[first]["data_offsets"])


def _overlap(header: dict) -> None:  # type: ignore[type-arg]
    """A tensor in the middle moved 4 bytes back: it overlaps its neighbour and leaves a gap."""
    name = _tensors_by_offset(header)[3]
    header[name]["data_offsets"] = [o - 4 for o in header[name]["data_offsets"]]


def _negative_offset(header: dict) -> None:  # type: ignore[type-arg]
    name = _tensors_by_offset(header)[0]
    header[name]["data_offsets"][0] = -4


def _unknown_dtype(header: dict) -> None:  # type: ignore[type-arg]
    header["transformer.wte.weight"]["dtype"] = "F31"


def _absurd_shape(header: dict) -> None:  # type: ignore[type-arg]
    header["transformer.h.0.ln_1.weight"]["shape"] = [2**40, 2**40, 0]  # 0 elements, but overflows while counting


def _shape_not_matching_bytes(header: dict) -> None:  # type: ignore[type-arg]
    header["transformer.h.0.ln_1.weight"]["shape"] = [2, 32]  # 64 elements in the bytes of 32


HEADER_DAMAGE = {
    "aliased_offsets": (_alias, "overlaps the tensor before it"),
    "overlapping_offsets": (_overlap, "overlaps the tensor before it"),
    "negative_offset": (_negative_offset, "is not [begin, end]"),
    "unknown_dtype": (_unknown_dtype, "unknown dtype 'F31'"),
    "absurd_shape": (_absurd_shape, "overflows 64 bits"),
    "shape_not_matching_bytes": (_shape_not_matching_bytes, "its dtype and shape need 256"),
}


@pytest.mark.parametrize("case", list(HEADER_DAMAGE))
def test_headers_safetensors_rejects_are_reported(export: tuple[Path, Path, torch.nn.Module], case: str) -> None:
    """Files safetensors refuses, with no manifest to give them away: the header check alone must catch them."""
    out, _, _ = export
    os.remove(out / "hfexport.json")
    edit, words = HEADER_DAMAGE[case]
    _edit_header(out / "model.safetensors", edit)
    with pytest.raises(Exception):  # noqa: B017 - whatever safetensors raises: it refuses the file
        load_file(str(out / "model.safetensors"))
    report = verify_directory(out)
    assert not report.ok
    assert any(
        "model.safetensors: not a valid safetensors file: tensor " in p and words in p for p in report.problems
    ), report.problems


def test_header_that_is_not_an_object_is_reported(export: tuple[Path, Path, torch.nn.Module]) -> None:
    out, _, _ = export
    body = b"[1, 2]  "
    (out / "model.safetensors").write_bytes(struct.pack("<Q", len(body)) + body)
    report = verify_directory(out)
    assert "model.safetensors: not a valid safetensors file: the header is a JSON list, not an object" in (
        report.problems
    )


FOREIGN = {
    "pytorch_model.bin": lambda d: (d / "pytorch_model.bin").write_bytes(b"PK\x03\x04 a pickle"),
    "extra_safetensors": lambda d: save_file({"x": torch.zeros(2)}, str(d / "model-extra.safetensors")),
    "nested_checkpoint": lambda d: ((d / "ckpt").mkdir(), (d / "ckpt" / "model.pt").write_bytes(b"x")),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_foreign_weight_files_are_flagged(export: tuple[Path, Path, torch.nn.Module], case: str) -> None:
    out, _, _ = export
    FOREIGN[case](out)
    report = verify_directory(out)
    assert not report.ok
    assert len(report.problems) == 1 and "a foreign weight file" in report.problems[0], report.problems


def test_single_file_beside_an_index_is_foreign(tmp_path: Path) -> None:
    model = make_gpt(16)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", max_shard_size="20KB")
    save_file({"x": torch.zeros(2)}, str(out / "model.safetensors"), metadata={"format": "pt"})
    report = verify_directory(out)
    assert report.problems == [
        "model.safetensors: a foreign weight file (model.safetensors.index.json does not name it); from_pretrained "
        "or a Hub push could pick it up: remove it or move it out of the directory"
    ]


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    model = make_gpt(17)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": model.model_args()}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32", max_shard_size="20KB")
    os.remove(out / "hfexport.json")  # a third-party directory: only the index tells where the weights are
    assert verify_directory(out).ok
    return out


def _point_index_at(out: Path, shard: str, name: str) -> None:
    index = json.loads((out / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_index_naming_a_file_outside_dir_is_not_followed(sharded: Path, how: str) -> None:
    """The shard moved out of DIR, the index pointing at it: a valid file, but not this directory's."""
    shard = sorted(p.name for p in sharded.glob("model-*.safetensors"))[0]
    outside = sharded.parent / "elsewhere"
    outside.mkdir()
    os.replace(sharded / shard, outside / shard)
    name = f"../elsewhere/{shard}" if how == "dotdot" else str(outside / shard)
    _point_index_at(sharded, shard, name)
    report = verify_directory(sharded)
    assert not report.ok
    reason = "is not a plain relative path" if how == "dotdot" else "is an absolute path"
    assert any(p.startswith(f"{name!r} (named in model.safetensors.index.json) {reason}") for p in report.problems), (
        report.problems
    )
    assert report.tensors < 28  # the shard outside was not read


def test_symlink_leaving_dir_is_not_followed(sharded: Path) -> None:
    shard = sorted(p.name for p in sharded.glob("model-*.safetensors"))[0]
    outside = sharded.parent / "elsewhere.safetensors"
    os.replace(sharded / shard, outside)
    (sharded / shard).symlink_to(outside)
    report = verify_directory(sharded)
    assert any(
        f"{shard} (named in model.safetensors.index.json) leaves the directory through a symlink" in p
        for p in report.problems
    ), report.problems


def test_manifest_naming_a_file_outside_dir_is_not_read(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """A manifest listing ../secret.txt with its true size and CRC: verify must not vouch for (or read) it."""
    out, _, _ = export
    secret = out.parent / "secret.txt"
    secret.write_bytes(b"password")
    manifest = json.loads((out / "hfexport.json").read_text())
    manifest["files"]["../secret.txt"] = {"size": 8, "crc32": f"{zlib.crc32(b'password'):08x}"}
    manifest["files"][str(secret)] = {"size": 8, "crc32": f"{zlib.crc32(b'password'):08x}"}
    (out / "hfexport.json").write_text(json.dumps(manifest))
    report = verify_directory(out)
    assert (
        "'../secret.txt' (listed in hfexport.json) is not a plain relative path; only plain relative names "
        in "".join(report.problems)
    )
    assert any(p.startswith(f"{str(secret)!r} (listed in hfexport.json) is an absolute path") for p in report.problems)


MALFORMED = {
    "config_a_list": ("config.json", "[]", "config.json is a JSON list, not an object"),
    "config_a_string": ("config.json", '"gpt2"', "config.json is a JSON str, not an object"),
    "config_deeply_nested": ("config.json", "[" * 100_000 + "]" * 100_000, "config.json is not valid JSON"),
    "config_not_utf8": ("config.json", b'{"a": "\xff"}', "config.json is not valid UTF-8"),
    "config_no_model_type": ("config.json", "{}", "config.json has no model_type string"),
    # a list is unhashable: choosing the family's ranges by it must not raise TypeError
    "config_model_type_a_list": ("config.json", '{"model_type": ["gpt2"]}', "config.json has no model_type string"),
    "manifest_a_list": ("hfexport.json", "[1]", "hfexport.json is a JSON list, not an object"),
    "manifest_lists_nothing": ("hfexport.json", '{"files": {}}', "hfexport.json does not list model-00001-of-"),
    "manifest_no_files": ("hfexport.json", '{"step": 1}', "hfexport.json has no files object"),
    "manifest_entry_a_string": (
        "hfexport.json",
        '{"files": {"config.json": "x"}}',
        "config.json: its hfexport.json entry has no integer size",
    ),
    "manifest_name_empty": (
        "hfexport.json",
        '{"files": {"": {"size": 1}}}',
        "'' (listed in hfexport.json) is not a file name",
    ),
    "index_a_string": (
        "model.safetensors.index.json",
        '"x"',
        "model.safetensors.index.json is a JSON str, not an object",
    ),
    "index_no_weight_map": (
        "model.safetensors.index.json",
        '{"metadata": {}}',
        "model.safetensors.index.json has no weight_map object",
    ),
    "index_weight_map_a_list": (
        "model.safetensors.index.json",
        '{"metadata": {}, "weight_map": []}',
        "has no weight_map object",
    ),
    "index_file_a_number": (
        "model.safetensors.index.json",
        '{"metadata": {}, "weight_map": {"a": 3}}',
        "do not name a .safetensors file",
    ),
    "index_no_metadata": ("model.safetensors.index.json", '{"weight_map": {}}', "has no metadata object"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_json_is_a_problem_not_a_crash(sharded: Path, case: str) -> None:
    name, content, words = MALFORMED[case]
    path = sharded / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    report = verify_directory(sharded)
    assert not report.ok
    assert any(words in p for p in report.problems), report.problems


def test_index_without_weight_map_is_not_sound(sharded: Path) -> None:
    (sharded / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": {}}')
    report = verify_directory(sharded)
    assert not report.ok
    shards = len(list(sharded.glob("model-*.safetensors")))
    assert sum("a foreign weight file" in p for p in report.problems) == shards, report.problems
    assert "the directory holds no tensors" in report.problems


def test_fifo_is_not_opened(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """A FIFO named config.json would block a reader forever: it is reported, not opened."""
    out, _, _ = export
    (out / "config.json").unlink()
    os.mkfifo(out / "config.json")
    report = verify_directory(out)
    assert "config.json is not a regular file" in report.problems


def test_directory_transformers_refuses_is_a_problem(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """Structurally sound, but transformers cannot build the model (5 heads do not divide a width of 32)."""
    out, ckpt, _ = export
    os.remove(out / "hfexport.json")
    config = json.loads((out / "config.json").read_text())
    config["n_head"] = 5
    (out / "config.json").write_text(json.dumps(config))
    assert verify_directory(out).ok  # nothing in the files themselves says it
    report = verify_directory(out, checkpoint=ckpt)
    assert not report.ok
    assert report.problems[0].startswith("comparing logits failed: ValueError"), report.problems


def test_every_problem_is_one_printable_line(export: tuple[Path, Path, torch.nn.Module]) -> None:
    """Names and values from the directory may hold newlines or unpaired surrogates: each problem stays one line."""
    out, _, _ = export
    manifest = json.loads((out / "hfexport.json").read_text())
    manifest["files"]["evil\nerror: all good"] = {"size": 1, "crc32": "00000000"}
    manifest["files"]["bad\ud800"] = {"size": 1, "crc32": "00000000"}
    (out / "hfexport.json").write_text(json.dumps(manifest))
    config = json.loads((out / "config.json").read_text())
    config["n_layer"] = "2\nok"
    (out / "config.json").write_text(json.dumps(config))
    report = verify_directory(out)  # the surrogate crashed os.path.realpath before it was refused as a name
    assert "evil\\nerror: all good (listed in hfexport.json) is missing" in report.problems
    assert any(p.startswith("'bad\\ud800' (listed in hfexport.json) is not a file name") for p in report.problems)
    assert any("n_layer=2\\nok" in p for p in report.problems), report.problems
    assert all(p.isprintable() for p in report.problems)


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


# -- facts the comparison takes from the checkpoint, never from the export it checks -------------------------------
def test_llama2c_rope_base_comes_from_its_code_default_not_the_export(tmp_path: Path) -> None:
    """llama2.c records no RoPE base (its code uses 10000, as convert does): an export claiming another base must be
    caught, not compared against itself."""
    from llama_ref import llama2c_model_args, make_llama

    model = make_llama(21)
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": llama2c_model_args(model.params)}, ckpt)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    assert verify_directory(out, checkpoint=ckpt).ok
    config = json.loads((out / "config.json").read_text())
    config["rope_theta"] = 500000.0
    if isinstance(config.get("rope_parameters"), dict):
        config["rope_parameters"]["rope_theta"] = 500000.0
    (out / "config.json").write_text(json.dumps(config))
    os.remove(out / "hfexport.json")  # a consistent tamper: only the logits can tell
    report = verify_directory(out, checkpoint=ckpt)
    assert not report.ok and any("logit diff" in p for p in report.problems), report.problems


def test_facts_taken_from_the_export_are_listed_as_unchecked(tmp_path: Path) -> None:
    """A Meta-named state dict with no config beside it: heads from --n_head, but the RMSNorm epsilon and RoPE base
    can only come from the export, and the report says so."""
    from llama_ref import make_llama

    model = make_llama(22)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    out = convert_checkpoint(
        tmp_path / "model.pt", tmp_path / "hf", dtype="float32", n_head=4, norm_eps=1e-5, rope_theta=10000.0
    )
    report = verify_directory(out, checkpoint=tmp_path / "model.pt", n_head=4)
    assert report.ok, report.problems
    assert any(u.startswith("RMSNorm epsilon (1e-05, from config.json)") for u in report.unchecked), report.unchecked
    assert any(u.startswith("RoPE base (10000, from config.json)") for u in report.unchecked), report.unchecked
    gpt = make_gpt(23)
    torch.save({"model": gpt.state_dict(), "model_args": gpt.model_args()}, tmp_path / "gpt.pt")
    out = convert_checkpoint(tmp_path / "gpt.pt", tmp_path / "hf_gpt", dtype="float32")
    assert [u.split(" ")[0] for u in verify_directory(out, checkpoint=tmp_path / "gpt.pt").unchecked] == ["activation"]
    assert verify_directory(out, checkpoint=tmp_path / "gpt.pt", activation="gelu").unchecked == []
