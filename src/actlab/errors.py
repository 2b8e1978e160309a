"""Error types. Every bad-input error names the bad value and, where there is a finite set, the valid choices.

The CLI turns any :class:`ActlabError` into a one-line message and exit code 2 (no traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ActlabError(ValueError):
    """Base class for errors caused by bad input or an unsupported setup."""


class ModelNotFoundError(ActlabError):
    """A model name or path could not be resolved."""


class UnsupportedArchitectureError(ActlabError):
    """No adapter is registered for a model's architecture."""


class AdapterValidationError(ActlabError):
    """An adapter's hook points do not reproduce the model's own outputs."""


class HookPointError(ActlabError):
    """A hook point name is malformed, misspelt or out of range."""


class InputError(ActlabError):
    """A prompt, batch or position specification is unusable."""


class ResumeRefused(InputError):
    """A folder's resume record was written under other settings: the job will not mix its results with them
    (the run record then keeps the folder's earlier run; see :class:`actlab.runs.Run`)."""


def choices_hint(bad: str, valid: Iterable[str], *, limit: int = 12) -> str:
    """Return ' Did you mean X? Valid: a, b, ...' for an error message."""
    valid = list(valid)
    close = difflib.get_close_matches(bad, valid, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(valid[:limit]) + (f", ... ({len(valid)} in all)" if len(valid) > limit else "")
    return f"{hint} Valid: {shown}."
