"""The ``hfexport`` command line: ``convert``, ``verify``, ``list`` and ``push``.

Bad input (arguments argparse rejects included) prints one line, ``error: ...`` naming the problem and the fix,
and exits with status 2 (``--debug`` shows the traceback). An environment failure (a full or read-only disk, an
I/O error) prints one line too and exits with status 1, as do unexpected failures.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from hfexport._util.validation import MAX_TIMEOUT_S, Range, int_problem
from hfexport._version import __version__
from hfexport.convert import DTYPES, convert_checkpoint
from hfexport.errors import HFExportError, HubError
from hfexport.families import ACTIVATIONS
from hfexport.families.llama import LLAMA_RANGES, ROPE_RANGES
from hfexport.hub.journal import PushJournal
from hfexport.hub.push import HubOptions, HubPusher, check_ref_name, push_version, resolve_push_dir
from hfexport.hub.retry import is_transient
from hfexport.io.chunkio import IO_MODES
from hfexport.io.publish import interrupt_outcome
from hfexport.io.versions import list_versions, read_latest
from hfexport.verify import verify_directory

__all__ = ["build_parser", "main"]

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1

#: Failures of the machine, not of the input: errno → what to do about it.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "free some space or write to another disk (--output_dir)",
    errno.EDQUOT: "free some space within your quota or write to another disk (--output_dir)",
    errno.EROFS: "choose an --output_dir on a writable file system",
    errno.EIO: "the disk reported an I/O error; check it, or write to another disk (--output_dir)",
}

#: Bad input: exit status 2.
_BAD_INPUT = (
    HFExportError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ImportError,
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose rejections are one line, ``error: ...`` and where to find the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum`` (:func:`~hfexport._util.validation.int_problem`)."""

    def parse(text: str) -> int:
        try:
            value: Any = int(text)
        except ValueError:
            value = text
        problem = int_problem(value, minimum=minimum)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"expected {problem.split(' (not ')[0]}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _one_line(text: str) -> str:
    """An argparse type: printable text without line breaks (it becomes the model card's heading)."""
    if not text.strip() or not text.isprintable():
        raise argparse.ArgumentTypeError(f"expected one line of printable text, got {text!r}")
    return text


def _number(rng: Range) -> Callable[[str], float]:
    """An argparse type: a finite number in ``rng`` (the range the value has where it is written or used)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        problem = rng.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(f"expected {problem}, got {text!r}")
        return value

    return parse


_positive_seconds = _number(Range(above=0.0, maximum=MAX_TIMEOUT_S))


def _option(parser: Any, name: str, **kwargs: Any) -> None:
    """Add ``--name`` to ``parser`` (or a group of it), also spelled ``--name-with-dashes`` when it has a ``_``."""
    parser.add_argument(*dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}")), **kwargs)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--quiet", "-q", action="store_true", help="only print errors")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hfexport`` command."""
    parser = _Parser(
        prog="hfexport",
        description="Export nanoGPT-style GPT-2 and Llama-style checkpoints to verified Hugging Face directories.",
    )
    parser.add_argument("--version", action="version", version=f"hfexport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_convert(sub)
    _add_verify(sub)
    _add_list(sub)
    _add_push(sub)
    return parser


def _add_convert(sub: Any) -> None:
    """``hfexport convert``: its options."""
    c = sub.add_parser("convert", help="convert a checkpoint file into a Hugging Face directory")
    c.add_argument(
        "checkpoint",
        metavar="CHECKPOINT",
        help="a .pt/.ckpt file, a directory of them, dir/step_N, or a torch.distributed.checkpoint directory",
    )
    _option(c, "output_dir", required=True, help="directory to create")
    _option(
        c, "dtype", default="bfloat16", choices=list(DTYPES), help="dtype of the written weights (default: bfloat16)"
    )
    _option(c, "model_name", type=_one_line, help="model name for the model card (one line of text)")
    _option(c, "vocab_size", type=_positive_int, help="keep the first N vocabulary rows (e.g. 50257 of 50304)")
    _option(
        c,
        "activation",
        choices=list(ACTIVATIONS),
        help="GELU the model was trained with: gelu (current nanoGPT, default), gelu_new (old nanoGPT, llm.c), "
        "gelu_pytorch_tanh (build-nanogpt, nano-gpt package; picked automatically for those layouts)",
    )
    _option(c, "n_head", type=_positive_int, help="attention heads, when the checkpoint does not record them")
    for flag, rng, what in (
        (
            "rope_theta",
            LLAMA_RANGES["rope_theta"][0],
            "RoPE base of a Llama-style model (10000 llama2.c/Llama 2, 500000 Llama 3)",
        ),
        ("norm_eps", LLAMA_RANGES["rms_norm_eps"][0], "RMSNorm/LayerNorm epsilon"),
        (
            "rope_scaling_factor",
            ROPE_RANGES["factor"][0],
            "Llama 3.1-style RoPE scaling factor (8 Llama 3.1, 32 Llama 3.2 1B/3B)",
        ),
    ):
        _option(c, flag, type=_number(rng), help=what + ", when the checkpoint does not record it")
    _option(c, "base_model", help="Hub id it was fine-tuned from (model card)")
    _option(c, "untie_embeddings", action="store_true", help="also write an independent lm_head.weight")
    tok = c.add_mutually_exclusive_group()
    _option(
        tok,
        "tokenizer",
        help="tokenizer to write: a directory, tokenizer.json, nanoGPT meta.pkl, 'gpt2' or a cached Hub repo id "
        "(default: meta.pkl of the checkpoint's dataset, else GPT-2's for a GPT-2 model)",
    )
    _option(tok, "no_tokenizer", action="store_true", help="write no tokenizer (the export is incomplete)")
    _option(
        c,
        "hub_timeout_s",
        type=_positive_seconds,
        default=60.0,
        help="timeout of every Hub request when --tokenizer is a Hub repo id not in the cache (default: 60)",
    )
    _option(c, "max_shard_size", default="5GB", help="shard the weights past this size (default: 5GB)")
    _option(
        c,
        "force",
        action="store_true",
        help="replace --output_dir if it holds an earlier export of hfexport (atomically); never anything else",
    )
    _option(c, "allow_nonfinite", action="store_true", help="write NaN/inf weights instead of refusing")
    _option(
        c,
        "io",
        choices=IO_MODES,
        default="auto",
        help="how the weights reach the disk: auto (default: direct I/O for shards of 64 MB or more, the page "
        "cache below), buffered (the page cache only), direct (direct I/O where the file system allows); "
        "HFEXPORT_DIRECT_IO=0/1/auto overrides it",
    )
    _option(c, "no_progress", action="store_true", help="no progress bar")
    _add_common(c)


def _add_verify(sub: Any) -> None:
    """``hfexport verify``: its options."""
    v = sub.add_parser("verify", help="check a Hugging Face directory (and its logits against a checkpoint)")
    v.add_argument("directory", metavar="DIR", help="a model directory, or an export root (checks its latest)")
    _option(v, "checkpoint", help="source checkpoint: compare logits through transformers")
    _option(v, "activation", choices=list(ACTIVATIONS), help="GELU of the source (default: the directory's)")
    _option(v, "n_head", type=_positive_int, help="attention heads of the source")
    _add_common(v)


def _add_list(sub: Any) -> None:
    """``hfexport list``: its options."""
    ls = sub.add_parser("list", help="list the versions of an export root")
    ls.add_argument("root", metavar="ROOT", help="an export root (holding step_XXXXXX/ and latest)")
    _add_common(ls)


def _add_push(sub: Any) -> None:
    """``hfexport push``: its options."""
    push = sub.add_parser("push", help="push a version directory (or an export root's latest) to the Hub")
    push.add_argument(
        "directory",
        metavar="DIR",
        help="a version directory, or an export root (pushes its latest; with --pending, every unpushed version)",
    )
    _option(push, "repo_id", required=True, help="namespace/name of the Hub model repository")
    vis = push.add_mutually_exclusive_group()
    _option(vis, "private", action="store_true", default=True, help="create the repo private (default)")
    _option(vis, "public", dest="private", action="store_false", help="create the repo public")
    _option(push, "revision", default="main", help="branch to commit to (default: main)")
    _option(push, "tag", help="tag for the commit (default: the version directory's name)")
    _option(push, "token", help="Hub token (default: HF_TOKEN or the `hf auth login` cache)")
    _option(
        push,
        "pending",
        action="store_true",
        help="push every version of the export root DIR that its push journal lists as not pushed, in step order",
    )
    _option(
        push,
        "timeout_s",
        type=_positive_seconds,
        default=60.0,
        help="timeout of every Hub request, in seconds (default: 60)",
    )
    _option(
        push,
        "max_retries",
        type=_non_negative_int,
        default=6,
        help="retries of a failed request (connection errors, timeouts, HTTP 5xx and 429; default: 6)",
    )
    _option(push, "no_progress", action="store_true", help="no progress bar")
    _add_common(push)


def _run_convert(args: argparse.Namespace) -> int:
    out = convert_checkpoint(
        args.checkpoint,
        args.output_dir,
        dtype=args.dtype,
        activation=args.activation,
        vocab_size=args.vocab_size,
        n_head=args.n_head,
        rope_theta=args.rope_theta,
        norm_eps=args.norm_eps,
        rope_scaling_factor=args.rope_scaling_factor,
        untie_embeddings=args.untie_embeddings,
        model_name=args.model_name,
        base_model=args.base_model,
        tokenizer=False if args.no_tokenizer else args.tokenizer,
        hub_timeout_s=args.hub_timeout_s,
        max_shard_size=args.max_shard_size,
        force=args.force,
        allow_nonfinite=args.allow_nonfinite,
        progress=False if args.no_progress else None,
        io=args.io,
        output_option="--output_dir",
    )
    if not args.quiet:
        print(f"wrote {out} ({args.dtype}); load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    if not Path(args.directory).is_dir():
        raise HFExportError(
            f"{args.directory!r} is not a directory; pass a model directory or an export root (holding latest)."
        )
    report = verify_directory(
        args.directory, checkpoint=args.checkpoint, activation=args.activation, n_head=args.n_head
    )
    if not args.quiet:
        print(f"{report.path}: {report.tensors} tensors, {report.files_checked} checksums checked")
        if report.max_logit_diff is not None:
            print(f"max |logit diff| against {args.checkpoint}: {report.max_logit_diff:.3g}")
        for fact in report.unchecked:
            print(f"not checked: {fact}")
    for problem in report.problems:
        print(f"error: {problem}", file=sys.stderr)
    if report.ok and not args.quiet:
        print("ok")
    return 0 if report.ok else 1


def _run_list(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise HFExportError(f"{args.root!r} is not a directory; pass an export root such as hf_exports.")
    latest = read_latest(root)
    versions = list_versions(root)
    states = PushJournal(root).states()
    for version in versions:
        size = sum(f.stat().st_size for f in version.path.iterdir() if f.is_file())
        mark = "  <- latest" if version.name == latest else ""
        print(f"{version.name}  step {version.step:>8}  {size / 1e6:9.1f} MB{mark}")
        for target, entry in states.get(version.name, []):
            state = entry.get("state", "?")
            detail = f" (commit {str(entry['commit'])[:10]})" if entry.get("commit") else ""
            if state == "failed" and entry.get("error"):
                detail = f": {str(entry['error']).splitlines()[0][:160]}"
            print(f"    hub {target}: {state}{detail}")
    if not versions:
        print("no versions")
    return 0


def _run_push(args: argparse.Namespace) -> int:
    if not args.debug:  # no per-request HTTP lines at INFO
        for noisy in ("httpx2", "httpx", "httpcore", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    options = HubOptions(
        repo_id=args.repo_id,
        token=args.token,
        private=args.private,
        revision=args.revision,
        on_push_error="raise",
        timeout_s=args.timeout_s,
        max_retries=args.max_retries,
    )
    if args.tag is not None:
        check_ref_name(args.tag, "tag")  # before the repository is created: `--tag ''` is not "no tag"
    if args.pending:
        root = Path(args.directory)
        if not root.is_dir() or args.tag is not None:
            raise HFExportError(
                f"--pending needs an export root (a directory holding step_XXXXXX/), got {args.directory!r}"
                + (" and cannot be combined with --tag" if args.tag is not None else "")
            )
        pusher = HubPusher(options, token_hint="--token")
        pusher.setup()
        queued = pusher.resume(root)
        pusher.close()  # raises when any of them failed (after its retries)
        if not args.quiet:
            if queued:
                pushed = ", ".join(path.name for _, path in queued)
                print(f"pushed {len(queued)} pending version(s) to {args.repo_id}@{args.revision}: {pushed}")
            else:
                print(f"nothing pending for {args.repo_id}@{args.revision} in {root}")
        return 0
    directory = resolve_push_dir(args.directory)
    pusher = HubPusher(options, token_hint="--token")
    pusher.setup()  # token check, repository creation (private unless --public), branch
    result = push_version(directory, options, tag=args.tag, progress=not args.no_progress, api=pusher.api)
    if not args.quiet:
        print(f"pushed {directory} to {args.repo_id}@{args.revision} (commit {result.commit_oid}, tag {result.tag})")
    return 0


_COMMANDS = {"convert": _run_convert, "verify": _run_verify, "list": _run_list, "push": _run_push}


def _configure_logging(level: int) -> None:
    """Progress (INFO, DEBUG) goes to stdout and problems (WARNING and up) to stderr, so that on bad input stderr
    holds the one ``error: ...`` line, not the progress logged before the problem was found."""
    formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    progress = logging.StreamHandler(sys.stdout)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    for handler in (progress, problems):
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[progress, problems])


def _hub_down(exc: HubError) -> bool:
    """Whether a Hub failure is the network's or the Hub's (down, rate-limited, a corrupt copy, still failing after
    every retry: exit 1), as opposed to the user's to fix (no or bad token, a repository they can't write, a path
    that is not a version: exit 2)."""
    cause: BaseException | None = exc
    while cause is not None:
        if is_transient(cause):
            return True
        cause = cause.__cause__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hfexport`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    _configure_logging(level)
    if not args.debug:
        for noisy in ("httpx", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt as exc:
        print(f"error: interrupted; {interrupt_outcome(exc)}", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        status, message = _failure(exc)
        print(f"error: {message}", file=sys.stderr)
        return status


def _failure(exc: Exception) -> tuple[int, str]:
    """The exit status and the line to print: 2 for bad input, 1 for the machine's or the Hub's failures (see
    :data:`_ENVIRONMENT_ERRORS`, :func:`_hub_down`) and for unexpected ones."""
    if isinstance(exc, HubError):
        return (EXIT_FAILURE if _hub_down(exc) else EXIT_BAD_INPUT), str(exc)
    if isinstance(exc, _BAD_INPUT):
        return EXIT_BAD_INPUT, str(exc)
    fix = _ENVIRONMENT_ERRORS.get(exc.errno or 0) if isinstance(exc, OSError) else None
    if fix is None or not isinstance(exc, OSError):
        return EXIT_FAILURE, f"unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
    where = f" ({exc.filename})" if exc.filename else ""
    return EXIT_FAILURE, f"{exc.strerror or exc}{where}; nothing was published: {fix}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
