"""Config files beside a checkpoint (``params.json``, ``model_config.yaml``): read only for their own layout, their
shape facts checked against the tensors, recorded in the card and manifest, read within bounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from exportkit import hf_logits, nanogpt_logits
from llama_ref import make_litllama, make_llama
from nanogpt import make_gpt
from test_llama import GQA, assert_parity, save_litgpt, save_meta

from hfexport import CheckpointError, convert_checkpoint
from hfexport.cli import main

pytest.importorskip("transformers")


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def stray_params_json(folder: Path, **fields: object) -> None:
    record = {"dim": 32, "n_layers": 2, "n_heads": 2, "vocab_size": 96, "norm_eps": 1e-5, **fields}
    (folder / "params.json").write_text(json.dumps(record))


# -- 2.1: a sidecar applies only to the layout it belongs to -----------------------------------------------------
def test_stray_params_json_does_not_set_a_nanogpt_models_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """model.pt (4 heads, a bare state dict) + a params.json saying 2: the file is not nanoGPT's, never read."""
    model = make_gpt(3)  # n_head=4, n_embd=32, vocab 96
    torch.save(model.state_dict(), tmp_path / "model.pt")
    stray_params_json(tmp_path)
    rc, err = cli(["convert", str(tmp_path / "model.pt"), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    assert rc == 2 and "--n_head" in err, err  # the heads are unknown: refused, not taken from the stray file
    assert not (tmp_path / "hf").exists()
    args = ["--output_dir", str(tmp_path / "hf"), "--dtype", "float32", "--n_head", "4", "-q"]
    rc, err = cli(["convert", str(tmp_path / "model.pt"), *args], capsys)
    assert rc == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["n_head"] == 4
    tokens = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    want = nanogpt_logits(model.state_dict(), tokens, vocab_size=96)
    assert float((hf_logits(tmp_path / "hf", tokens) - want).abs().max()) <= 1e-4
    manifest = json.loads((tmp_path / "hf" / "hfexport.json").read_text())
    assert "config" not in manifest.get("inferred", {})


def test_verify_does_not_take_the_heads_from_the_export_it_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export with the wrong heads (2 of 4): verify --checkpoint of a file that records none must not say ok."""
    model = make_gpt(4)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    stray_params_json(tmp_path)
    args = ["--output_dir", str(tmp_path / "hf"), "--dtype", "float32", "--n_head", "2", "-q"]
    assert main(["convert", str(tmp_path / "model.pt"), *args]) == 0  # the user's (wrong) word
    rc, err = cli(["verify", str(tmp_path / "hf"), "--checkpoint", str(tmp_path / "model.pt"), "-q"], capsys)
    assert rc != 0 and "--n_head" in err, err
    rc, err = cli(["verify", str(tmp_path / "hf"), "--checkpoint", str(tmp_path / "model.pt"), "--n_head", "4"], capsys)
    assert rc == 1 and "logit diff" in err, err  # the true heads: the wrong export is caught
    rc, err = cli(["verify", str(tmp_path / "hf"), "--checkpoint", str(tmp_path / "model.pt"), "--n_head", "2"], capsys)
    assert rc == 0, err  # consistent with what the user says


def test_litgpt_reads_its_model_config_yaml_not_a_params_json_beside_it(tmp_path: Path) -> None:
    model = make_litllama(5)
    ckpt = save_litgpt(model, tmp_path / "lit")
    stray_params_json(tmp_path / "lit", n_heads=2, n_kv_heads=1)
    out = convert_checkpoint(ckpt, tmp_path / "hf", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert_parity(out, model)
    manifest = json.loads((out / "hfexport.json").read_text())
    assert manifest["inferred"]["config"].startswith("model_config.yaml beside the checkpoint")
    card = (out / "README.md").read_text()
    assert "| inferred config | model_config.yaml beside the checkpoint" in card
    assert str(tmp_path) not in card and str(tmp_path) not in json.dumps(manifest)


def test_meta_params_json_is_recorded_as_inferred(tmp_path: Path) -> None:
    model = make_llama(6, **GQA)
    out = convert_checkpoint(save_meta(model, tmp_path / "m"), tmp_path / "hf", dtype="float32")
    assert_parity(out, model)
    manifest = json.loads((out / "hfexport.json").read_text())
    assert manifest["inferred"]["config"].startswith("params.json beside the checkpoint")


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("dim", 64, "dim=64, but the checkpoint has 32 tok_embeddings.weight columns"),
        ("n_layers", 3, "n_layers=3, but the checkpoint has 2 layers"),
        ("vocab_size", 100, "vocab_size=100, but the checkpoint has 64 tok_embeddings.weight rows"),
        ("dim", "32", "dim='32'"),
    ],
)
def test_params_json_shape_facts_must_agree_with_the_tensors(
    tmp_path: Path, field: str, value: object, says: str
) -> None:
    ckpt = save_meta(make_llama(7, **GQA), tmp_path / "m", **{field: value})
    with pytest.raises(CheckpointError, match="params.json beside consolidated.00.pth says " + says):
        convert_checkpoint(ckpt, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_llama2_params_json_vocab_size_minus_one_is_accepted(tmp_path: Path) -> None:
    model = make_llama(8, **GQA)
    out = convert_checkpoint(save_meta(model, tmp_path / "m", vocab_size=-1), tmp_path / "hf", dtype="float32")
    assert_parity(out, model)


@pytest.mark.parametrize(
    ("field", "value"), [("n_embd", 64), ("n_layer", 4), ("padded_vocab_size", 128)], ids=["width", "layers", "vocab"]
)
def test_model_config_yaml_shape_facts_must_agree_with_the_tensors(tmp_path: Path, field: str, value: int) -> None:
    ckpt = save_litgpt(make_litllama(9), tmp_path / "lit")
    config = yaml.safe_load((tmp_path / "lit" / "model_config.yaml").read_text())
    config[field] = value
    (tmp_path / "lit" / "model_config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(CheckpointError, match=f"model_config.yaml beside lit_model.pth says {field}={value}, but"):
        convert_checkpoint(ckpt, tmp_path / "hf")


# -- 3.3: one clear line naming the file and the field -----------------------------------------------------------
def _litgpt_with(tmp_path: Path, **fields: object) -> Path:
    ckpt = save_litgpt(make_litllama(10), tmp_path / "lit")
    config = yaml.safe_load((tmp_path / "lit" / "model_config.yaml").read_text())
    (tmp_path / "lit" / "model_config.yaml").write_text(yaml.safe_dump({**config, **fields}))
    return ckpt


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"rope_adjustments": {"factor": 8.0}}, "rope_adjustments lacks low_freq_factor, high_freq_factor"),
        ({"head_size": "abc"}, "head_size='abc' (str) is not a positive integer"),
    ],
    ids=["rope_adjustments-partial", "head_size-abc"],
)
def test_bad_model_config_yaml_field_is_one_line_naming_field_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict, says: str
) -> None:
    ckpt = _litgpt_with(tmp_path, **fields)
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert says in lines[0] and "read from model_config.yaml beside the checkpoint" in lines[0]
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name", ["params.json", "model_config.yaml"])
def test_deeply_nested_sidecar_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    if name == "params.json":
        ckpt = save_meta(make_llama(11, **GQA), tmp_path / "m")
        (tmp_path / "m" / name).write_text("[" * 200_000 + "]" * 200_000)
    else:
        ckpt = save_litgpt(make_litllama(11), tmp_path / "m")
        (tmp_path / "m" / name).write_text("a: " + "[" * 200_000 + "]" * 200_000)
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and name in lines[0], err


# -- 3.4: bounded work on hostile sidecars -----------------------------------------------------------------------
def alias_bomb(levels: int, fan: int = 9) -> str:
    """YAML whose last anchor expands to fan**levels strings (a few hundred bytes)."""
    lines = [f"l0: &l0 [{', '.join(['x'] * fan)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["name", "norm_class_name"])
def test_yaml_alias_bomb_is_refused_before_it_expands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """The name goes into the card, a non-Llama field into a message: an alias there would be expanded by str/repr
    (9**6 strings here; 9**9 took minutes and gigabytes). Aliases are refused from the parser's events."""
    ckpt = save_litgpt(make_litllama(12), tmp_path / "lit")
    config = yaml.safe_dump(
        {k: v for k, v in yaml.safe_load((tmp_path / "lit" / "model_config.yaml").read_text()).items() if k != where}
    )
    (tmp_path / "lit" / "model_config.yaml").write_text(alias_bomb(6) + config + f"{where}: *l5\n")
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and len(lines[0]) < 500, err[:2000]
    assert "model_config.yaml" in lines[0] and "uses a YAML alias (*l0)" in lines[0]
    assert not (tmp_path / "hf").exists()


def test_oversized_sidecar_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = save_meta(make_llama(13, **GQA), tmp_path / "m")
    record = json.loads((tmp_path / "m" / "params.json").read_text())
    (tmp_path / "m" / "params.json").write_text(json.dumps(record) + " " * (256 * 1024))  # valid JSON, 256 kB + more
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    assert rc == 2 and "params.json' (the config beside the checkpoint) is refused unread" in err, err


def test_long_sidecar_values_are_cut_in_messages_and_the_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long = "y" * 200_000
    ckpt = save_meta(make_llama(14, **GQA), tmp_path / "m", n_heads=long)
    rc, err = cli(["convert", str(ckpt), "--output_dir", str(tmp_path / "hf"), "-q"], capsys)
    assert rc == 2 and "n_heads='yyyy" in err and "is not a positive integer" in err and len(err) < 1000, err[:2000]
    model = make_litllama(15)
    out = convert_checkpoint(save_litgpt(model, tmp_path / "lit", name=long), tmp_path / "hf", dtype="float32")
    card = (out / "README.md").read_text()
    assert len(card) < 10_000 and "| litgpt_config | yyyy" in card
