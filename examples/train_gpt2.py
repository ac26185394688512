"""Train a small GPT-2 on Hamlet and export it to Hugging Face format while it trains.

This is the end-to-end example for hfexport: a nanoGPT-style model (the same parameter names as nanoGPT's
`model.py`), trained on CPU in a few minutes, with a Hugging Face model directory written every
`--export_every` steps. When training ends, the newest export (`OUTPUT_DIR/latest`) is loaded back with plain
`transformers` (`AutoModelForCausalLM`, `AutoTokenizer`, `pipeline`) and asked to write some Shakespeare.

Everything it needs ships with the repository (`examples/data/`): the text and a byte-level BPE tokenizer
trained on it. Nothing is downloaded.

    pip install -e ".[lightning,transformers]"   # from a clone of hfexport (not on PyPI)
    python examples/train_gpt2.py                           # Lightning Trainer + HFExportCallback
    python examples/train_gpt2.py --loop plain              # a plain PyTorch loop + HFExporter
    python examples/train_gpt2.py --push_to_hub you/hamlet-gpt2   # also push each export to the Hub
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

DATA_DIR = Path(__file__).resolve().parent / "data"
CORPUS = DATA_DIR / "hamlet.txt"
TOKENIZER_FILE = DATA_DIR / "tokenizer.json"
EOT = "<|endoftext|>"


# -----------------------------------------------------------------------------
# Tokenizer: a byte-level BPE (GPT-2's scheme) trained on the corpus itself, so it works offline.


def train_tokenizer(corpus: Path, vocab_size: int = 1024) -> Tokenizer:
    """Trains a GPT-2-style byte-level BPE on `corpus` (well under a second for Hamlet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],  # id 0
        # every byte is in the vocabulary, so any text encodes, even characters Hamlet never uses
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus.read_text(encoding="utf-8")], trainer)
    return tokenizer


def get_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """Loads the committed tokenizer (training it if the file is missing) as a `PreTrainedTokenizerFast`.

    hfexport writes it into each export (its `tokenizer.json`, and a `tokenizer_config.json` naming
    `PreTrainedTokenizerFast` with these special tokens), so that `AutoTokenizer.from_pretrained(export_dir)` and
    `pipeline("text-generation", model=export_dir)` work there, under transformers 4.x and 5.x alike. The export's
    `model_max_length` is the model's context.
    """
    from transformers import PreTrainedTokenizerFast

    if not TOKENIZER_FILE.exists():
        train_tokenizer(CORPUS).save(str(TOKENIZER_FILE))
    return PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER_FILE),
        bos_token=EOT,
        eos_token=EOT,
        unk_token=EOT,
        pad_token=EOT,
        model_max_length=model_max_length,
    )


# -----------------------------------------------------------------------------
# The model: nanoGPT's GPT-2, trimmed to what this example uses. Parameter names are nanoGPT's, which is
# what hfexport maps to transformers' GPT2LMHeadModel.


@dataclass
class GPTConfig:
    block_size: int = 128
    vocab_size: int = 1024
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms, like GPT-2


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nn.LayerNorm has no bias=False before torch 2.1)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # noqa: N806 (batch, time, channels)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact (erf) GELU, as in current nanoGPT: HF's activation_function="gelu"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config  # hfexport reads the architecture (sizes) from here
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output projection is the token embedding (GPT-2 does this; so does HF's export)
        self.transformer.wte.weight = self.lm_head.weight  # type: ignore[assignment]
        self.apply(self._init_weights)
        # GPT-2 scales the init of the residual projections by 1/sqrt(number of residual layers)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def configure_optimizers(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        # decay the matrices (matmuls, embeddings) but not biases and LayerNorm gains, as nanoGPT does
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def lr_lambda(max_steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup, then cosine decay to 10% of the peak learning rate (nanoGPT's schedule)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# -----------------------------------------------------------------------------
# Data: random windows of the tokenized text; the same seeded stream feeds both loops.


def load_tokens(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    # verbose=False: the whole play is of course longer than the model's context; no warning for that
    ids = tokenizer(CORPUS.read_text(encoding="utf-8"), verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def batches(
    data: torch.Tensor, batch_size: int, block_size: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches; targets are the inputs shifted by one token."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen)
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
        yield x, y


class Batches(torch.utils.data.IterableDataset):
    """`batches` as a dataset, for Lightning's DataLoader."""

    def __init__(self, data: torch.Tensor, batch_size: int, block_size: int, seed: int) -> None:
        self.args = (data, batch_size, block_size, seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return batches(*self.args)


# -----------------------------------------------------------------------------
# Training loop 1: Lightning, exporting with HFExportCallback.


def train_lightning(
    args: argparse.Namespace, model: GPT, data: torch.Tensor, tokenizer: PreTrainedTokenizerFast
) -> list[float]:
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar

    from hfexport.lightning import HFExportCallback

    class LitGPT(L.LightningModule):
        def __init__(self, model: GPT) -> None:
            super().__init__()
            self.model = model  # HFExportCallback exports `pl_module.model`
            self.losses: list[float] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            _, loss = self.model(*batch)
            self.log("loss", loss, prog_bar=True)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self) -> dict:
            optimizer = self.model.configure_optimizers(args.lr, args.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.max_steps, args.warmup))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # one process reading an in-memory tensor: worker processes would only add start-up time
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    loader = torch.utils.data.DataLoader(
        Batches(data, args.batch_size, model.config.block_size, args.seed), batch_size=None
    )
    export = HFExportCallback(
        dirpath=args.output_dir,  # the export root: step_XXXXXX/ directories and `latest`
        dtype="bfloat16",  # half the size of fp32, with fp32's range (fp16 can overflow)
        every_n_train_steps=args.export_every,
        keep_last_n=args.keep_last_n,
        tokenizer=tokenizer,  # written into every export (not GPT-2's: this one is trained on Hamlet)
        push_to_hub=args.push_to_hub is not None,
        repo_id=args.push_to_hub,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=args.max_steps,
        # tqdm rather than the rich bar: it also shows progress when the output goes to a log file
        callbacks=[export, TQDMProgressBar(refresh_rate=10)],
        logger=False,  # the loss is on the progress bar; no lightning_logs/ directory
        enable_checkpointing=False,  # the exports are this example's checkpoints
        enable_model_summary=False,
    )
    lit = LitGPT(model)
    trainer.fit(lit, train_dataloaders=loader)
    return lit.losses


# -----------------------------------------------------------------------------
# Training loop 2: plain PyTorch, exporting with HFExporter.


def train_plain(
    args: argparse.Namespace, model: GPT, data: torch.Tensor, tokenizer: PreTrainedTokenizerFast
) -> list[float]:
    from tqdm import tqdm

    from hfexport import HFExporter

    optimizer = model.configure_optimizers(args.lr, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args.max_steps, args.warmup))
    exporter = HFExporter(  # the same options as HFExportCallback in train_lightning
        args.output_dir,
        every_n_steps=args.export_every,
        dtype="bfloat16",
        keep_last_n=args.keep_last_n,
        tokenizer=tokenizer,
        push_to_hub=args.push_to_hub is not None,
        repo_id=args.push_to_hub,
    )
    stream = batches(data, args.batch_size, model.config.block_size, args.seed)
    model.train()
    losses: list[float] = []
    progress = tqdm(range(1, args.max_steps + 1), desc="training", unit="step")
    for step in progress:
        x, y = next(stream)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
        # cheap unless `step` is a multiple of --export_every; then it snapshots the weights and returns
        # while a background thread writes the directory (the loss goes into the model card)
        exporter.maybe_export(model, step, loss=losses[-1])
    # the final weights, even when max_steps is not a multiple of --export_every (a no-op when it is)
    exporter.export(model, args.max_steps, final=True, loss=losses[-1])
    exporter.close()  # waits for pending writes (and pushes); raises if one of them failed
    return losses


# -----------------------------------------------------------------------------
# After training: the export is an ordinary Hugging Face model directory.


def sample(output_dir: Path, prompt: str = "HAMLET.\n", max_new_tokens: int = 80) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    latest = output_dir / "latest"
    # bfloat16 on disk; float32 is the fast path for CPU generation
    model = AutoModelForCausalLM.from_pretrained(latest, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(latest)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    out = generator(prompt, max_new_tokens=max_new_tokens, do_sample=True, top_k=40, temperature=0.8)
    return out[0]["generated_text"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", type=Path, default=Path("hf_exports"), help="where exports are written")
    p.add_argument("--loop", choices=["lightning", "plain"], default="lightning")
    p.add_argument("--max_steps", type=int, default=500)
    p.add_argument("--export_every", type=int, default=100, help="export every N optimizer steps")
    p.add_argument("--keep_last_n", type=int, default=3, help="how many step_XXXXXX exports to keep")
    p.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="also push each export to the Hub")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=50, help="learning-rate warmup steps")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # one line per export as it is published (step, path, size, the training stall it cost, verified, pushed or
    # queued); other libraries stay at WARNING
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.WARNING)
    logging.getLogger("hfexport").setLevel(logging.INFO)
    torch.manual_seed(args.seed)  # the same initial weights in both loops

    config = GPTConfig()
    tokenizer = get_tokenizer(model_max_length=config.block_size)
    config.vocab_size = len(tokenizer)
    data = load_tokens(tokenizer)
    model = GPT(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{CORPUS.name}: {len(data):,} tokens; model: {n_params / 1e6:.2f}M parameters; loop: {args.loop}")

    t0 = time.perf_counter()
    train = train_lightning if args.loop == "lightning" else train_plain
    losses = train(args, model, data, tokenizer)
    last = sum(losses[-20:]) / len(losses[-20:])  # averaged: a single batch's loss is noisy
    print(
        f"trained {args.max_steps} steps in {time.perf_counter() - t0:.1f}s: loss {losses[0]:.2f} at the first step, "
        f"{last:.2f} over the last {len(losses[-20:])}; exports in {args.output_dir}/"
    )

    print("sample from", args.output_dir / "latest", "\n" + "-" * 60)
    print(sample(args.output_dir))


if __name__ == "__main__":
    main()
