"""Open-ended generations and their scores: greedy generations of a behaviour's prompts under chosen cells (the
cells of one prompt variant as rows of shared generate() calls, :func:`actlab.steering.prefix.cell_generations`)
and the judge-free scores that are always computed - perplexity of the generated text under the unsteered model
(given the plain prompt), distinct-1/2 and 3-gram repetition, and the behaviour's own scorer (VADER compound for
sentiment, the refusal-phrase rate for refusal) - plus the LLM judge's ratings when one is configured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..parallel import block_range, gather, rank_and_world
from ..steering.prefix import cell_generations, pad_rows
from ..steering.prompts import format_prompt
from .grid import distinct_edits, edit_labels
from .metrics import text_scores

if TYPE_CHECKING:
    from .behaviours import Behaviour
    from .context import Context
    from .methods import Cell


def generations(ctx: Context, beh: Behaviour, prompts: Sequence[str], variant: str, cells: Sequence[Cell]
                ) -> list[list[str]]:
    """Greedy generations ``[prompt][cell]`` of ``prompts`` in a variant's style under each of its cells; under
    torchrun each rank generates a block of prompts."""
    style = ctx.style(beh, variant)
    texts = [format_prompt(ctx.model, p, style) for p in prompts]
    edits, index = distinct_edits(cells)
    rank, world = rank_and_world()
    first, stop = block_range(len(texts), ctx.cfg.batch_size, rank, world) if world > 1 else (0, len(texts))
    kw: dict[str, Any] = dict(add_special_tokens=style.add_special_tokens(), positions=ctx.cfg.grid.positions,
                              max_new_tokens=ctx.cfg.open_ended.max_new_tokens, batch_size=ctx.cfg.batch_size,
                              cells_per_batch=ctx.cfg.cells_per_batch,
                              labels=edit_labels(cells, index, len(edits)),
                              source={"evaluation": f"open-ended {beh.name}"})
    mine = texts[first:stop]
    got = cell_generations(ctx.model, mine, edits, strict=False, **kw) if mine else []
    if got is None:  # a cache that cannot be shared between rows: whole prompts, cells still batched
        got = cell_generations(ctx.model, mine, edits, share_prefix=False, **kw)
    assert got is not None
    if world > 1:
        got = [row for part in gather(got) for row in part]
    return [[row[index[c]] for c in range(len(cells))] for row in got]


@torch.no_grad()
def perplexities(ctx: Context, beh: Behaviour, prompts: Sequence[str], texts: Sequence[str]) -> list[float | None]:
    """Per generation, exp(mean negative log-likelihood) of its tokens under the unsteered model given the plain
    prompt (None for an empty generation)."""
    model = ctx.model
    style = ctx.style(beh, "plain")
    tok = model.tokenizer
    out: list[float | None] = []
    pad = getattr(tok, "pad_token_id", None) or 0
    for s in range(0, len(texts), ctx.cfg.batch_size):
        ps, ts = prompts[s:s + ctx.cfg.batch_size], texts[s:s + ctx.cfg.batch_size]
        heads = [tok(format_prompt(model, p, style), add_special_tokens=style.add_special_tokens())["input_ids"]
                 for p in ps]
        tails = [tok(t, add_special_tokens=False)["input_ids"] for t in ts]
        ids, mask = pad_rows([h + t for h, t in zip(heads, tails, strict=True)], pad, "right")
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.double()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(logits.device))[..., 0].cpu()
        for b, (h, t) in enumerate(zip(heads, tails, strict=True)):
            if not t:
                out.append(None)
                continue
            nll = -lp[b, len(h) - 1:len(h) - 1 + len(t)].mean()
            out.append(float(math.exp(min(float(nll), 50.0))))
    return out


def scorer_values(kind: str | None, texts: Sequence[str]) -> list[float] | None:
    """The behaviour's judge-free score per text: VADER compound (sentiment) or 1/0 refusal (refusal)."""
    if kind == "vader":
        from ..steering.scorers import VaderScorer

        return VaderScorer()([""] * len(texts), texts)
    if kind == "refusal":
        from ..steering.refusal import is_refusal

        return [float(is_refusal(t)) for t in texts]
    return None


def judge_free(ctx: Context, beh: Behaviour, prompts: Sequence[str], texts: Sequence[str]) -> list[dict[str, Any]]:
    """Per generation: perplexity under the unsteered model, distinct-n, repetition, and the behaviour's scorer."""
    ppl = perplexities(ctx, beh, prompts, texts)
    sc = scorer_values(beh.scorer, texts)
    return [{**text_scores(t), "perplexity": ppl[i], **({"score": sc[i]} if sc is not None else {})}
            for i, t in enumerate(texts)]


def mean_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean of every numeric score over generations (None values left out)."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {}
    for k in keys:
        vals = [float(r[k]) for r in rows if isinstance(r.get(k), (int, float)) and r[k] is not None]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out
