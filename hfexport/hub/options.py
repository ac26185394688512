"""Where and how versions are pushed to the Hub: :class:`HubOptions` and the git ref names it accepts.

Below :mod:`hfexport.hub.retry` (which reads the options' retry settings) and :mod:`hfexport.hub.push` (which pushes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from hfexport._util.validation import MAX_TIMEOUT_S, check_float, check_int
from hfexport.errors import OptionError

__all__ = ["HubOptions", "check_ref_name"]

# Hub repository names: letters, digits, "-", "_", "."; no "--" or ".."; at most 96 characters.
_REPO_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
# Characters and sequences git refuses in a branch or tag name (git check-ref-format), plus whitespace.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|^[./-]|[./]$|\.lock$|^@$")


@dataclass(frozen=True)
class HubOptions:
    """Where and how versions are pushed.

    Args:
        repo_id: ``"namespace/name"`` of the model repository (created if missing).
        token: A Hugging Face token with write access. ``None`` uses ``HF_TOKEN`` or the token saved by
            ``hf auth login``, as ``huggingface_hub`` resolves it. It is never logged nor shown in ``repr``.
        private: Create the repository private (the default). An existing repository keeps its visibility.
        revision: The branch every version is committed to (created from ``main`` if missing).
        tag_versions: Tag each version's commit with its directory name (``step_000500``).
        on_push_error: ``"warn"`` logs a failed push and goes on; ``"raise"`` raises it from the next
            :meth:`~hfexport.hub.push.HubPusher.check` / :meth:`~hfexport.hub.push.HubPusher.close`.
        max_retries: How many times a failed push is retried (so at most ``max_retries + 1`` attempts).
            Retried: connection errors, timeouts, HTTP 408, 429 and 5xx. Other errors fail at once.
        backoff_base_s: The first retry delay; it doubles on each retry, with jitter.
        backoff_max_s: The longest retry delay. A ``Retry-After`` sent with a 429 or 503 is honoured even
            when longer, up to :data:`~hfexport.hub.retry.MAX_RETRY_AFTER_S`, so the total time spent waiting
            stays bounded.
        push_mode: ``"every"`` pushes every version, in step order (none is ever skipped); ``"latest"`` pushes
            only the newest waiting version when pushes fall behind (the skipped ones are logged and journaled;
            a final version is always pushed).
        timeout_s: The timeout of every Hub request, set-up check included: connecting, and each read or write
            (an upload that keeps sending is not cut). A request that times out is a failed attempt, retried.

    Raises:
        OptionError: An option is invalid (the message says which and why); a ``ValueError``.
    """

    repo_id: str
    token: str | None = field(default=None, repr=False)
    private: bool = True
    revision: str = "main"
    tag_versions: bool = True
    on_push_error: Literal["warn", "raise"] = "warn"
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    push_mode: Literal["every", "latest"] = "every"
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        parts = self.repo_id.split("/") if isinstance(self.repo_id, str) else []
        if (
            len(parts) != 2
            or not all(_REPO_NAME.fullmatch(p) for p in parts)
            or any(".." in p or "--" in p for p in parts)
        ):
            raise OptionError(
                f"Invalid value for repo_id={self.repo_id!r}. Must look like 'namespace/name' (letters, "
                "digits, '-', '_' and '.', no '--' or '..', at most 96 characters each), e.g. 'me/gpt2'."
            )
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise OptionError("Invalid token: must be a non-empty string, or None to use HF_TOKEN / `hf auth login`.")
        if not isinstance(self.revision, str) or self.revision.startswith("refs/"):
            raise OptionError(f"Invalid value for revision={self.revision!r}. Must be a branch name, e.g. 'main'.")
        check_ref_name(self.revision, "revision")
        if self.on_push_error not in ("warn", "raise"):
            raise OptionError(f"Invalid value for on_push_error={self.on_push_error!r}. Must be 'warn' or 'raise'.")
        check_int("max_retries", self.max_retries, minimum=0)
        check_float("backoff_base_s", self.backoff_base_s, minimum=0.0)
        check_float("backoff_max_s", self.backoff_max_s, minimum=0.0)
        if self.push_mode not in ("every", "latest"):
            raise OptionError(f"Invalid value for hub_push={self.push_mode!r}. Must be 'every' or 'latest'.")
        check_float("hub_timeout_s", self.timeout_s, above=0.0, maximum=MAX_TIMEOUT_S)
        if not self.backoff_max_s >= self.backoff_base_s:
            raise OptionError(
                f"Invalid value for backoff_max_s={self.backoff_max_s!r}. Must be >= backoff_base_s "
                f"({self.backoff_base_s})."
            )


def check_ref_name(name: str, what: str) -> None:
    """Refuse a branch or tag name git (and so the Hub) would refuse, or that is empty.

    Args:
        name: The name.
        what: ``"revision"`` or ``"tag"``, for the message.

    Raises:
        OptionError: the name is empty or not a valid git ref name.
    """
    if not isinstance(name, str) or not name or len(name) > 200 or _BAD_REF.search(name):
        raise OptionError(
            f"Invalid {what} name {name!r}: must be a non-empty git ref name of at most 200 characters, without "
            "spaces, control characters, '..', '~', '^', ':', '?', '*', '[', '\\' or '@{', not starting with "
            "'-', '.' or '/' and not ending with '/', '.' or '.lock', e.g. 'main' or 'step_000500'."
        )
