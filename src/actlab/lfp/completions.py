"""The fine-tuned model's continuations of IMDb review prefixes, as the LFP stages make them: the word counts
of Fig. 4 (agreement stage) and the rewards before and after ablating features (features stage).

The study (its Table 6) samples 1000 completions of 30-token prefixes; the ``tiny`` preset keeps 8-word prefixes
and greedy decoding (a 656K-parameter model samples noise). :class:`CompletionSpec` says which; every output
records it. Sampled runs are seeded per condition, so the ablation's before/after/random generations share
their random numbers (common random numbers: the difference is the ablation, not the draw)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from ..configs import StrictConfig
from ..data.readers import DatasetError, csv_rows

if TYPE_CHECKING:
    from ..models.model import Model


class CompletionSpec(StrictConfig):
    prefix_words: int = Field(8, gt=0)  # prefix length in words ...
    prefix_tokens: int | None = Field(None, gt=0)  # ... or in the model's tokens (the study: 30)
    sample: bool = False  # the study samples; greedy by default
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0)  # 0: no top-k cut
    batch_size: int = Field(16, gt=0)

    def describe(self) -> str:
        prefix = f"{self.prefix_tokens}-token" if self.prefix_tokens else f"{self.prefix_words}-word"
        how = (f"sampled (temperature {self.temperature:g}{f', top-k {self.top_k}' if self.top_k else ''})"
               if self.sample else "greedy")
        return f"{how} continuations of {prefix} IMDb prefixes"


def prefixes(path: str | os.PathLike[str], n: int, spec: CompletionSpec, tokenizer: Any) -> list[str]:
    """The first ``n`` reviews long enough, cut to ``prefix_tokens`` tokens (decoded back to text) or to
    ``prefix_words`` words (HTML line breaks removed)."""
    out: list[str] = []
    for _, key, row in csv_rows(path, ("text",), what="IMDb file"):
        text = " ".join(row[key].replace("<br />", " ").split())
        if spec.prefix_tokens:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) >= spec.prefix_tokens:
                out.append(tokenizer.decode(ids[: spec.prefix_tokens]))
        else:
            ws = text.split()
            if len(ws) >= spec.prefix_words:
                out.append(" ".join(ws[: spec.prefix_words]))
        if len(out) >= n:
            break
    if not out and n > 0:
        what = f"{spec.prefix_tokens} tokens" if spec.prefix_tokens else f"{spec.prefix_words} words"
        raise DatasetError(f"{path}: no review has {what}")
    return out


def complete(model: Model, prompts: list[str], spec: CompletionSpec, *, max_new_tokens: int, seed: int,
             advance: Callable[[int], None] | None = None) -> list[str]:
    """Continuations of ``prompts`` (new text only), batched; sampled ones seeded with ``seed`` first."""
    kw: dict[str, Any] = {"do_sample": False}
    if spec.sample:
        kw = {"do_sample": True, "temperature": spec.temperature, "top_k": spec.top_k or None, "top_p": 1.0}
        torch.manual_seed(seed)
    out: list[str] = []
    for s in range(0, len(prompts), spec.batch_size):
        chunk = prompts[s:s + spec.batch_size]
        out += model.generate_text(chunk, max_new_tokens=max_new_tokens, **kw)
        if advance is not None:
            advance(len(chunk))
    return out
