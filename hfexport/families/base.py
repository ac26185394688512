"""What a source architecture provides, and the plan it returns.

An architecture turns a training state dict (prefixes already stripped) plus the facts its shapes do not
carry into a :class:`ConversionPlan`: the list of output tensors, each a recipe over a source tensor
(rename, transpose, keep the first rows, or zeros), and the Hugging Face ``config.json``. Plans are lazy:
nothing is copied until :meth:`TensorPlan.fill` (a range of rows, into the writer's buffer) or
:meth:`TensorPlan.materialize` (a whole new tensor) is called, so the writer can stream a checkpoint chunk by
chunk (peak memory of a few chunks) and the exporter can snapshot everything at once (training goes on).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from hfexport._util.brief import brief
from hfexport._util.validation import Range, shown
from hfexport.errors import ConversionError
from hfexport.io.sidecars import Sidecar

__all__ = [
    "Architecture",
    "ConversionPlan",
    "DeferredTensor",
    "ModelFacts",
    "TensorPlan",
    "TokenizerGuess",
    "check_plan",
    "compare_shapes",
    "config_dim",
    "halves_from_interleaved",
    "is_tied",
    "layer_indices",
    "out_vocab",
    "positive_int",
    "range_problems",
    "refuse_unexpected",
    "require",
    "source_values",
    "transpose_into",
    "unknown_tokenizer",
]

_TRANSPOSE_ROWS = 64  # source rows per step of a whole-tensor transposing copy (measured: 64-128 are fastest)


@dataclass(frozen=True)
class ModelFacts:
    """Facts about a model that its tensor shapes do not carry.

    Every field may be ``None`` (unknown); an architecture says which ones it needs and the error names the
    option that provides a missing one.
    """

    n_head: int | None = None
    bias: bool | None = None
    dropout: float | None = None
    layer_norm_epsilon: float | None = None
    block_size: int | None = None
    vocab_size: int | None = None
    n_kv_heads: int | None = None
    rope_theta: float | None = None
    #: The source's config as read (family-specific fields, e.g. litgpt's ``norm_class_name``); not compared.
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> ModelFacts:
        """Read facts from a config dict (nanoGPT ``model_args``, a dataclass's ``vars``), ignoring the rest."""
        if not mapping:
            return cls()
        aliases = {
            "n_head": ("n_head", "num_attention_heads", "n_heads", "num_heads"),
            "bias": ("bias",),
            "dropout": ("dropout",),
            "layer_norm_epsilon": ("layer_norm_epsilon", "layer_norm_eps", "norm_eps", "rms_norm_eps", "eps"),
            "block_size": (
                "block_size",
                "n_positions",
                "n_ctx",
                "context_length",
                "max_seq_len",
                "max_position_embeddings",
            ),
            "vocab_size": ("vocab_size",),
            "n_kv_heads": ("n_kv_heads", "num_key_value_heads", "n_query_groups"),
            "rope_theta": ("rope_theta", "rope_base"),
        }
        values: dict[str, Any] = {}
        for name, keys in aliases.items():
            for key in keys:
                if key in mapping and mapping[key] is not None:
                    value = mapping[key]
                    if isinstance(value, torch.Tensor):
                        value = value.item()
                    values[name] = value
                    break
        return cls(**values, raw=dict(mapping))

    def merged(self, override: ModelFacts) -> ModelFacts:
        """These facts with every non-``None`` field of ``override`` taking precedence."""
        merged = dict(vars(self))
        merged.update({k: v for k, v in vars(override).items() if v is not None})
        if self.raw and override.raw:
            merged["raw"] = {**self.raw, **override.raw}
        return ModelFacts(**merged)


class DeferredTensor(torch.Tensor):
    """A source tensor whose values are read only when they are needed: a meta tensor (its shape and dtype, no
    memory) with a ``read`` function that returns its values as a new CPU tensor, at each call.

    A checkpoint read one tensor at a time (``torch.distributed.checkpoint``, :mod:`hfexport.dcp`) hands these to
    :meth:`Architecture.plan`; shapes, dtypes and names are all a plan needs, except where values are compared
    (:func:`is_tied`, through :func:`source_values`). The writer (:func:`hfexport.convert.output_tensors`) reads each
    one when its first chunk is produced and lets it go after its last.
    """

    read: Callable[[], torch.Tensor]

    @staticmethod
    def __new__(cls, shape: Sequence[int], dtype: torch.dtype, read: Callable[[], torch.Tensor]) -> DeferredTensor:
        tensor = torch.Tensor._make_subclass(cls, torch.empty(tuple(shape), dtype=dtype, device="meta"))
        tensor.read = read
        return tensor


def source_values(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or the values of a :class:`DeferredTensor` (read now: a new tensor at each call)."""
    return tensor.read() if isinstance(tensor, DeferredTensor) else tensor


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor: how to make it from a source tensor.

    Attributes:
        name: The Hugging Face parameter name.
        source: The source tensor (may live on any device, may be an mmap'd view); ``None`` means zeros.
        shape: The output shape.
        transpose: Whether the 2-D source is transposed (nn.Linear ``(out, in)`` → Conv1D ``(in, out)``).
        rows: Keep only the first ``rows`` rows of the source (vocabulary trimming), or ``None``.
        row_start: This output is one part of a fused source (litgpt's ``attn.qkv``): source rows
            ``row_start : row_start + shape[0]``; ``None`` otherwise.
        rope_heads: The rows are this many attention heads whose rotary pairs are interleaved (``x0 y0 x1 y1 ...``,
            Meta's / llama2.c's RoPE); write each head as halves (``x0 x1 ... y0 y1 ...``, transformers' RoPE).
            ``None``: rows kept in order. Not combined with ``transpose``.
    """

    name: str
    source: torch.Tensor | None
    shape: tuple[int, ...]
    transpose: bool = False
    rows: int | None = None
    row_start: int | None = None
    rope_heads: int | None = None

    def selected(self) -> torch.Tensor:
        """The source rows this output uses (a view, no copy; before any transpose or RoPE permutation)."""
        if self.source is None:
            raise ValueError(f"{self.name} is written as zeros: it has no source rows")
        src = self.source.detach()
        if self.row_start is not None:
            return src[self.row_start : self.row_start + self.shape[0]]
        if self.rows is not None:
            return src[: self.rows]
        return src

    def materialize(self, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole output in ``dtype`` on ``device``: :meth:`fill` into a new tensor (owning its memory, never the
        source's), made on the source's device (on GPU the cast halves what crosses to the host)."""
        made_on = self.source.device if self.source is not None else device
        out = torch.empty(self.shape, dtype=dtype, device=made_on)
        self.fill(out)
        return out if out.device == torch.device(device) else out.to(device)

    def fill(self, out: torch.Tensor, start: int = 0, stop: int | None = None) -> None:
        """Write output rows ``start:stop`` into ``out``, casting to ``out``'s dtype on the way.

        Args:
            out: A contiguous tensor of shape ``(stop - start, *shape[1:])`` (``()`` for a 0-d output), e.g. a
                view of the writer's staging buffer.
            start: First output row.
            stop: End of the rows; ``None`` means all of them.
        """
        if self.source is None:
            out.zero_()
            return
        src = self.selected()
        if not self.shape:
            out.copy_(src)
        elif self.rope_heads is not None:
            halves_from_interleaved(out, src, self.rope_heads, start, stop)
        elif self.transpose:
            transpose_into(out, src, start, stop)
        else:
            out.copy_(src[start:stop])


def transpose_into(out: torch.Tensor, src: torch.Tensor, start: int = 0, stop: int | None = None) -> None:
    """``out[:] = src[:, start:stop].t()``, cast to ``out``'s dtype: the transposing copy of a Conv1D weight.

    A whole matrix goes a band of source rows at a time: each band is cast (contiguously, vectorized) and copied
    into a band of ``out``'s columns, which stays in cache. Measured on a 5120x1280 float32 → bfloat16 weight:
    about 1.3x the time of a plain cast, against 3.4x for casting then ``.t().contiguous()`` and 5x for one
    strided cast-and-transpose copy. A range of output rows (a column range of the source) is cast then copied.
    """
    cols = src.shape[1]
    stop = cols if stop is None else stop
    if start == 0 and stop == cols:
        for r in range(0, src.shape[0], _TRANSPOSE_ROWS):
            band = src[r : r + _TRANSPOSE_ROWS]
            out[:, r : r + _TRANSPOSE_ROWS].copy_(band.to(out.dtype).t())
    else:
        out.copy_(src[:, start:stop].to(out.dtype).t())


def halves_from_interleaved(
    out: torch.Tensor, src: torch.Tensor, heads: int, start: int = 0, stop: int | None = None
) -> None:
    """Rows ``start:stop`` of the RoPE permutation of ``src`` into ``out``, cast to ``out``'s dtype.

    ``src`` holds ``heads`` heads of ``head_dim`` rows each, whose rotary pairs are interleaved rows
    (``2j, 2j + 1``); the output holds each head as its even rows then its odd rows, which is
    ``src.view(heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(src.shape)`` (transformers'
    ``convert_llama_weights_to_hf.permute``). Each block of ``head_dim // 2`` output rows is one strided slice of
    ``src`` (every other row), copied and cast in one pass; no full-size temporary.
    """
    total = src.shape[0]
    stop = total if stop is None else stop
    head_dim = total // heads
    half = head_dim // 2
    for block in range(start // half, (stop - 1) // half + 1) if stop > start else ():
        head, parity = divmod(block, 2)
        lo, hi = max(start, block * half), min(stop, (block + 1) * half)
        first = head * head_dim + parity + 2 * (lo - block * half)
        out[lo - start : hi - start].copy_(src[first : first + 2 * (hi - lo) : 2])


def same_storage(a: torch.Tensor, b: torch.Tensor, *, same_shape: bool = False) -> bool:
    """Whether ``a`` and ``b`` share their storage (and, with ``same_shape``, their shape: a tied weight).

    ``a is b`` where there is no local storage (a meta tensor, a DTensor).
    """
    if a.device.type == "meta" or b.device.type == "meta":  # no storage: every data_ptr() is 0
        return a is b
    try:
        shared = a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, AttributeError):  # no local storage (e.g. a DTensor)
        return a is b
    return shared and (not same_shape or a.shape == b.shape)


@dataclass(frozen=True)
class TokenizerGuess:
    """What a family infers of its models' tokenizer from the vocabulary's rows alone, when none is named.

    The conversion hands it to the tokenizer code (:func:`hfexport.tokenizers.tokenizer.resolve_tokenizer`'s
    ``guess``), which knows how to build a tokenizer but not which family uses which.

    Attributes:
        builtin: A tokenizer hfexport builds itself, by the name ``--tokenizer`` takes (``"gpt2"``: GPT-2's BPE),
            that a vocabulary of these rows is taken to be; ``None`` when the rows tell nothing.
        why: With ``builtin``, how it was inferred (the log, the model card, ``hfexport.json``); without, why
            nothing could be (the log's "No tokenizer written: ...").
    """

    builtin: str | None
    why: str


def unknown_tokenizer(model_type: str | None, vocab: int | None) -> TokenizerGuess:
    """The guess of a family whose vocabulary's size tells nothing of its tokenizer (or of no known family)."""
    whose = f"a {model_type} model's vocabulary" if model_type else "the vocabulary"
    return TokenizerGuess(None, f"{whose} ({vocab} rows) says nothing of its tokenizer")


@dataclass
class ConversionPlan:
    """Everything needed to write a Hugging Face directory, before any tensor is materialized."""

    architecture: str
    tensors: list[TensorPlan]
    config: dict[str, Any]
    generation_config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: Facts for the model card that the source tells (e.g. its family's tag); the caller's facts take precedence.
    card_facts: dict[str, Any] = field(default_factory=dict)


def config_dim(config: Mapping[str, Any], key: str) -> int:
    """``config[key]`` as a size (an ``int`` >= 0, never a bool, float or string).

    Raises:
        ConversionError: naming the key and the value found.
    """
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConversionError(
            f"config {key}={brief(value)} ({type(value).__name__}) is not a size: expected an integer >= 0."
        )
    return value


def range_problems(config: Mapping[str, Any], ranges: Mapping[str, tuple[Range, str]], where: str = "") -> list[str]:
    """The values of ``config`` out of their range, one line each: ``KEY=VALUE: expected WHAT (FIX)``.

    Args:
        config: A ``config.json`` (or one of its objects).
        ranges: Key → (its range, where a wrong value comes from, ``""`` if nowhere to say). Absent keys pass.
        where: The prefix of the keys in the lines (``"rope_scaling."``).
    """
    lines = []
    for key, (rng, fix) in ranges.items():
        problem = rng.problem(config[key]) if key in config else None
        if problem is not None:
            lines.append(f"{where}{key}={shown(config[key])}: expected {problem}" + (f" ({fix})" if fix else ""))
    return lines


def positive_int(name: str, value: Any, fix: str) -> int:
    """``value`` if it is an ``int`` >= 1 (never a bool, ``4.0`` or ``"4"``), else a message naming it and the fix.

    Raises:
        ConversionError: ``value`` is not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConversionError(f"{name}={brief(value)} ({type(value).__name__}) is not a positive integer. {fix}")
    return value


def require(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    """``sd[key]``, else a ``ConversionError``: the checkpoint is incomplete or not ``what`` (``"a llama model"``)."""
    try:
        return sd[key]
    except KeyError:
        raise ConversionError(
            f"Missing tensor {key!r}: the checkpoint is incomplete or not {what} ({len(sd)} tensors found)."
        ) from None


def layer_indices(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """The layer numbers ``N`` of the keys ``{prefix}N.*``; refused unless they are ``0 .. n-1`` (n >= 1)."""
    pattern = re.compile("^" + re.escape(prefix) + r"(\d+)\.")
    layers = sorted({int(m.group(1)) for k in sd if (m := pattern.match(k))})
    if not layers:
        raise ConversionError(f"No transformer layers ({prefix}N.*) found in the state dict.")
    if layers != list(range(len(layers))):
        raise ConversionError(f"Layer indices are not contiguous: found {layers}; the checkpoint is incomplete.")
    return layers


def out_vocab(vocab_size: int | None, trained: int) -> int:
    """The vocabulary rows to write: ``vocab_size`` (trimming only) or, when ``None``, the ``trained`` rows."""
    if vocab_size is None:
        return trained
    if vocab_size < 1:
        raise ConversionError(f"Invalid vocab_size={vocab_size}. Must be >= 1.")
    if vocab_size > trained:
        raise ConversionError(
            f"--vocab_size {vocab_size} is larger than the trained embedding ({trained} rows). Only trimming is "
            f"supported: pass a value <= {trained}, or leave it out to keep the vocabulary as trained."
        )
    return vocab_size


def is_tied(head: torch.Tensor | None, embed: torch.Tensor) -> bool:
    """Whether an output head repeats the embedding: absent, the same tensor, or an equal copy (a tie stored
    twice). Compared only at the same dtype (``torch.equal`` raises on some dtype pairs)."""
    if head is None or same_storage(head, embed, same_shape=True):
        return True
    if head.shape != embed.shape or head.dtype != embed.dtype:
        return False
    if isinstance(head, DeferredTensor) or isinstance(embed, DeferredTensor):
        # Read one at a time, never both in memory: a tie stored twice is the same bytes.
        return _digest(source_values(head)) == _digest(source_values(embed))
    return bool(torch.equal(head, embed))


def _digest(tensor: torch.Tensor) -> bytes:
    """The SHA-256 of a CPU tensor's bytes, hashed through an 8 MB buffer (no second copy of the tensor)."""
    flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
    digest = hashlib.sha256()
    block = bytearray(min(flat.numel(), 8 << 20))
    if block:
        staging = torch.frombuffer(block, dtype=torch.uint8)
        for start in range(0, flat.numel(), len(block)):
            n = min(len(block), flat.numel() - start)
            staging[:n].copy_(flat[start : start + n])
            digest.update(memoryview(block)[:n])
    return digest.digest()


def refuse_unexpected(
    sd: Mapping[str, torch.Tensor], known: set[str], kind: str, family: str, expects: str | None = None
) -> None:
    """Refuse a state dict holding tensors outside ``known``; the message names them, says that the state dict is
    not ``family`` (``"a nanoGPT-style GPT-2"``, whose models are ``kind``: ``"GPT-2"``) and what it ``expects``."""
    unexpected = sorted(k for k in sd if k not in known)
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else "")
        raise ConversionError(
            f"The state dict has {len(unexpected)} tensor(s) a {kind} does not have: {shown}. It is not {family} "
            "(or carries an unknown prefix)." + (f" Expected: {expects}." if expects else "")
        )


def check_plan(plan: ConversionPlan, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a plan whose tensors are not what its ``config.json`` says, before anything is written.

    ``expected`` maps every key of the Hugging Face model that ``plan.config`` describes to the shape it must
    have: what :meth:`Architecture.expected_shapes` returns. Checked, naming the key, its shape and the expected
    one: the plan has exactly these keys; no dimension is 0 (an empty vocabulary, ...); each output has its
    expected shape; each source tensor has that shape too (in the source's layout: transposed for ``transpose``,
    any number of rows >= ``rows`` when rows are kept); every row-trimmed (vocabulary) source has the same number
    of rows; every source is a real floating-point tensor (complex or integer weights are refused, not cast).

    Raises:
        ConversionError: the first mismatch found.
    """
    names = [tp.name for tp in plan.tensors]
    missing = [key for key in expected if key not in set(names)]
    extra = [name for name in names if name not in expected]
    if missing or extra:
        raise ConversionError(
            f"The {plan.architecture} plan does not match its config: missing {missing[:5]}, unexpected {extra[:5]}."
        )
    vocab_rows: dict[str, int] = {}
    for tp in plan.tensors:
        want = tuple(expected[tp.name])
        if 0 in want:
            raise ConversionError(
                f"{tp.name} has shape {want}: a dimension of 0 rows or columns (an empty vocabulary or width) "
                "cannot be exported; the checkpoint is not a trained model."
            )
        src = tp.source
        if src is None:
            if tuple(tp.shape) != want:
                raise ConversionError(f"{tp.name} would be written with shape {tuple(tp.shape)}, expected {want}.")
            continue
        if not src.dtype.is_floating_point:
            raise ConversionError(
                f"{tp.name} is {str(src.dtype).removeprefix('torch.')}: only real floating-point weights can be "
                "exported (a cast would drop imaginary parts or invent precision). Fix the checkpoint's weights."
            )
        shape = tuple(src.shape)
        layout = tuple(reversed(want)) if tp.transpose else want  # what the source must look like
        described: tuple[int | str, ...] = layout  # as the message shows it: ">=N" rows where more are allowed
        if tp.row_start is not None:  # a part of a fused source: its rows lie inside it
            ok = len(shape) == len(layout) and shape[1:] == layout[1:] and shape[0] >= tp.row_start + want[0]
            described = (f">={tp.row_start + want[0]}", *layout[1:])
        elif tp.rows is not None:
            vocab_rows[tp.name] = shape[0] if shape else 0
            ok = len(shape) == len(layout) and shape[1:] == layout[1:] and shape[0] >= tp.rows
            described = (f">={tp.rows}", *layout[1:])
        else:
            ok = shape == layout
        if not ok:
            shown = "(" + ", ".join(map(str, described)) + ("," if len(described) == 1 else "") + ")"
            raise ConversionError(f"{tp.name} has shape {shape}, expected {shown} (from the model's config).")
        if tuple(tp.shape) != want:
            raise ConversionError(f"{tp.name} would be written with shape {tuple(tp.shape)}, expected {want}.")
    if len(set(vocab_rows.values())) > 1:
        shown = ", ".join(f"{name} has {rows}" for name, rows in vocab_rows.items())
        raise ConversionError(f"The vocabulary tensors disagree on their number of rows: {shown}.")


def compare_shapes(
    display_name: str,
    expected_shapes: Callable[[Mapping[str, Any]], Mapping[str, tuple[int, ...]]],
    config: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int]],
) -> list[str]:
    """What ``hfexport verify`` finds wrong with a directory's tensors (``shapes``, by name) against what its
    ``config.json`` implies through its family's ``expected_shapes``: each implied tensor missing or of another
    shape, one line each; or one line saying the config lacks what the family (``display_name``) needs."""
    try:
        expected = expected_shapes(config)
    except (ConversionError, KeyError, TypeError, ZeroDivisionError) as exc:
        return [f"config.json lacks what a {display_name} needs ({type(exc).__name__}: {exc})"]
    problems = []
    for name, shape in expected.items():
        if name not in shapes:
            problems.append(f"{name} is missing (config.json implies it)")
        elif tuple(shapes[name]) != shape:
            problems.append(f"{name} has shape {list(shapes[name])}, config.json implies {list(shape)}")
    return problems


class Architecture(Protocol):
    """A source model family (e.g. nanoGPT-style GPT-2). Register instances with ``register``.

    A family owns every fact about itself, so that no other module names it:

    * :meth:`detect` (is this state dict mine?), :meth:`plan` (the output tensors and ``config.json``) and
      :meth:`expected_shapes` (the shape of every key of the Hugging Face model a ``config.json`` describes).
      :func:`hfexport.convert.plan_conversion` runs :func:`check_plan` on every plan with the family's
      ``expected_shapes``, for the CLI and for live models alike, and ``hfexport verify`` checks a directory's
      tensors against them, so a family only states the shapes; it needs no checks of its own beyond what it must
      read to build the config (e.g. that ``wte`` is a matrix, that ``n_head`` is a positive integer dividing
      ``n_embd``). A fact it needs and cannot find raises :class:`~hfexport.errors.MissingFactError` naming it.
    * :meth:`shape_problems` (``hfexport verify``'s check of a directory's tensors against its ``config.json``,
      through :func:`compare_shapes` and :meth:`expected_shapes`), :meth:`config_problems` (the numbers of its
      ``config.json`` out of range) and :meth:`context_length` (the tokenizer's ``model_max_length``).
    * :meth:`special_ids` (the bos/eos ids of the tokenizers its models use, when known from the vocabulary) and
      :meth:`tokenizer_guess` (the tokenizer its models are taken to use when none is named: GPT-2's BPE for a
      GPT-2 vocabulary); the tokenizer code is handed the guess and never names a family.
    * :attr:`model_type` and :attr:`display_name` (the ``config.json`` ``model_type`` it writes, and its name in
      the model card), :attr:`sidecar` (the config file its checkpoints keep beside them, if any) and
      :attr:`tokenizer_beside` (the tokenizer files a conversion looks for beside the checkpoint when none is named).
    * :meth:`reference_difference`: ``hfexport verify --checkpoint``'s comparison of an export's logits with an
      independent forward pass of the source weights.
    """

    name: str
    #: What the family's state dict looks like, for the error on an unknown layout (e.g. ``"transformer.wte ..."``).
    expects: str
    #: The ``model_type`` of the ``config.json`` it writes (several families may write the same one).
    model_type: str
    #: The family's name in the model card ("A GPT-2-style causal language model").
    display_name: str
    #: The config file its checkpoints keep beside them (Meta's ``params.json``), or ``None``.
    sidecar: Sidecar | None
    #: Tokenizer files looked for beside the checkpoint when none is named, in order (``()``: none is looked for):
    #: a ``tokenizer.json`` is used as a tokenizer directory, a ``tokenizer.model`` only when it is sentencepiece.
    tokenizer_beside: tuple[str, ...]

    def detect(self, keys: set[str]) -> bool:
        """Whether a prefix-stripped state dict with these keys belongs to this family."""
        ...

    def plan(
        self,
        state_dict: Mapping[str, torch.Tensor],
        facts: ModelFacts,
        *,
        activation: str,
        vocab_size: int | None,
        untie_embeddings: bool,
    ) -> ConversionPlan:
        """Build the conversion plan; raise ``ConversionError`` naming what is missing and how to provide it."""
        ...

    def expected_shapes(self, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Every tensor key of the Hugging Face model ``config`` (this family's ``config.json``) describes, with
        the shape ``from_pretrained`` requires; raise ``ConversionError`` for a config value that is not a size
        (see :func:`config_dim`)."""
        ...

    def config_problems(self, config: Mapping[str, Any]) -> list[str]:
        """The numbers of this family's ``config.json`` out of their range, one line each (``[]``: all in range)."""
        ...

    def shape_problems(self, config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> list[str]:
        """What ``hfexport verify`` finds wrong with a directory's tensors (``shapes``) against ``config``: at least
        :func:`compare_shapes` with this family's :meth:`expected_shapes`, one line each."""
        ...

    def context_length(self, config: Mapping[str, Any]) -> int | None:
        """The context length this family's ``config.json`` states (the tokenizer's ``model_max_length``)."""
        ...

    def special_ids(self, vocab: int) -> tuple[int | None, int | None]:
        """The (bos, eos) ids of the tokenizers this family's models use, from the vocabulary's rows; ``None``
        where unknown (a tokenizer, when there is one, gives the ids instead)."""
        ...

    def tokenizer_guess(self, vocab: int | None) -> TokenizerGuess:
        """What a vocabulary of ``vocab`` rows tells of this family's tokenizer when none is named (and no
        nanoGPT ``meta.pkl`` is found): a tokenizer hfexport builds, or why there is none
        (:func:`unknown_tokenizer` when the rows tell nothing)."""
        ...

    def reference_difference(
        self,
        exported: Any,
        state_dict: Mapping[str, torch.Tensor],
        facts: ModelFacts,
        *,
        n_head: int,
        activation: str | None,
        tokens: int,
        unchecked: list[str],
    ) -> float:
        """Max |logit difference| between ``exported`` (a ``transformers`` model of this family's ``model_type``,
        in float32) and an independent forward pass of ``state_dict`` in the source's layout.

        The reference's facts come from ``facts`` (the checkpoint), the options (``n_head``, ``activation``) or the
        producer's known code defaults, never from the export's config; where none tells, the export's value is
        used and the fact appended to ``unchecked`` (naming the option that would check it).
        """
        ...
