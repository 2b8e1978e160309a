"""The forward-only measurements of a grid of cells, all through the prefix-reuse engine
(:func:`actlab.steering.prefix.iter_cell_logits`), one pass per (behaviour, prompt variant) with every cell of
that variant as rows of the same forwards:

- A/B: for every item in both letter orders, the log-probability difference of the matching minus the other
  answer's first token (``p(matching) = sigmoid(difference)``, normalised over the two letters);
- side effects: KL of the next-token distribution on neutral text to the unsteered model's (every token
  steered), and accuracy on a multiple-choice capability set.

Under torchrun each rank evaluates a contiguous block of whole batches and the blocks are gathered in order
(identical to one process). The per-cell statistics are pure functions of the saved numbers (:func:`summary`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..data import ABItem
from ..errors import InputError
from ..parallel import block_range, gather, rank_and_world
from ..progress import task as progress_task
from ..steering.evaluate import ab_prompts, first_label
from ..steering.prefix import CellEdits, boundaries, iter_cell_logits
from ..steering.prompts import PromptStyle, format_prompt, with_answer
from .behaviours import both_orders
from .metrics import bootstrap_ci, kl_from_logits, letter_balance

if TYPE_CHECKING:
    from .context import Context
    from .methods import Cell

COLLAPSE_SHARE = 0.95


def distinct_edits(cells: Sequence[Cell]) -> tuple[list[CellEdits], list[int]]:
    """The distinct forwards of a variant's cells: the unedited one first (the variant's baseline), then every
    cell that edits the model; and, per cell, its index in that list."""
    edits, index = [CellEdits()], []
    for c in cells:
        e = c.edits
        if not e.add and e.rotate is None and e.ablate is None:
            index.append(0)
        else:
            index.append(len(edits))
            edits.append(e)
    return edits, index


def edit_labels(cells: Sequence[Cell], index: Sequence[int], n: int) -> list[dict[str, Any]]:
    """What each distinct forward is, for the run record: the (first) cell that uses it."""
    out: list[dict[str, Any]] = [{"method": "unedited"} for _ in range(n)]
    for c, i in zip(reversed(cells), reversed(index), strict=True):
        out[i] = c.label()
    return out


def run_cells(ctx: Context, rows: Sequence[Sequence[int]], starts: Sequence[int], edits: Sequence[CellEdits],
              reduce: Callable[[torch.Tensor, slice], torch.Tensor], what: str,
              labels: Sequence[dict[str, Any]] | None = None) -> torch.Tensor:
    """``reduce``'d next-token logits of every row under every cell, ``[rows, cells]``; under torchrun split by
    blocks of whole batches and gathered."""
    rank, world = rank_and_world()
    first, stop = block_range(len(rows), ctx.cfg.batch_size, rank, world) if world > 1 else (0, len(rows))
    parts = []
    with progress_task(what, total=stop - first, unit="rows") as task:
        for _, t in iter_cell_logits(ctx.model, rows, starts, edits, batch_size=ctx.cfg.batch_size,
                                     cells_per_batch=ctx.cfg.cells_per_batch, first_row=first, stop_row=stop,
                                     reduce=reduce, labels=labels or [{"cell": i} for i in range(len(edits))],
                                     source={"evaluation": what}):
            parts.append(t)
            task.advance(t.shape[0], cells=len(edits))
    mine = torch.cat(parts) if parts else torch.zeros(0, len(edits))
    return torch.cat([p for p in gather(mine)]) if world > 1 else mine


def ab_pass(ctx: Context, items: Sequence[ABItem], style: PromptStyle, cells: Sequence[Cell], what: str
            ) -> dict[str, Any]:
    """Every item in both letter orders under every cell: ``{"ld": [row][edit], "src", "order",
    "first_is_match", "index": per cell its column}``."""
    rows, src, order = both_orders(list(items))
    prompts = ab_prompts(ctx.model, rows, style)
    ids = [p.ids for p in prompts]
    starts = boundaries(ctx.model, ids, ctx.cfg.grid.positions)
    edits, index = distinct_edits(cells)
    match = torch.tensor([p.match_id for p in prompts])
    other = torch.tensor([p.other_id for p in prompts])

    def diff(logits: torch.Tensor, sl: slice) -> torch.Tensor:
        lp = torch.log_softmax(logits.double(), -1)
        a = lp.gather(-1, match[sl].to(lp.device)[:, None, None].expand(-1, lp.shape[1], 1))[..., 0]
        b = lp.gather(-1, other[sl].to(lp.device)[:, None, None].expand(-1, lp.shape[1], 1))[..., 0]
        return (a - b).float().cpu()

    ld = run_cells(ctx, ids, starts, edits, diff, what, edit_labels(cells, index, len(edits)))
    label = first_label(prompts)
    return {"ld": ld.tolist(), "src": src, "order": order, "index": index,
            "first_is_match": [p.match_label == label for p in prompts], "first_label": label,
            "steered_from_eoi": sum(1 for s in starts if s > 0)}


def per_item(ab: dict[str, Any], cell: int, n_items: int) -> dict[str, torch.Tensor]:
    """One cell's numbers per item (rows of both orders averaged): ``p`` (letter-balanced p(matching)), ``ld``
    (log-probability difference), ``p_orig``/``p_swapped`` (NaN where the item has no swapped order), and per
    row ``p_first_row`` and ``prefers_first_row``."""
    ld_rows = torch.tensor(ab["ld"], dtype=torch.float64)[:, ab["index"][cell]]
    p_rows = torch.sigmoid(ld_rows)
    src, order = torch.tensor(ab["src"]), torch.tensor(ab["order"])
    fm = torch.tensor(ab["first_is_match"])
    out = {k: torch.full((n_items,), float("nan"), dtype=torch.float64) for k in ("p_orig", "p_swapped")}
    for o, key in ((0, "p_orig"), (1, "p_swapped")):
        sel = order == o
        out[key][src[sel]] = p_rows[sel]
    cnt = torch.zeros(n_items, dtype=torch.float64).index_add_(0, src, torch.ones_like(p_rows))
    out["p"] = torch.zeros(n_items, dtype=torch.float64).index_add_(0, src, p_rows) / cnt
    out["ld"] = torch.zeros(n_items, dtype=torch.float64).index_add_(0, src, ld_rows) / cnt
    out["p_first_row"] = torch.where(fm, p_rows, 1 - p_rows)
    return out


def summary(ab: dict[str, Any], cell: int, items: slice, n_items: int, base: dict[str, torch.Tensor] | None, *,
            n_boot: int, seed: int) -> dict[str, Any]:
    """A cell's statistics on the items of one split (``items``: their positions in the pass): mean p(matching)
    with a bootstrap interval, the effect against ``base`` (the plain unsteered run) with a paired bootstrap
    interval, the mean log-probability difference, the letter balance and the collapse check."""
    d = per_item(ab, cell, n_items)
    src = torch.tensor(ab["src"])
    rows = (src >= items.start) & (src < items.stop)
    p = d["p"][items]
    mean, lo, hi = bootstrap_ci(p, n=n_boot, seed=seed)
    out: dict[str, Any] = {"p": mean, "p_low": lo, "p_high": hi, "ld": float(d["ld"][items].mean()), "n": len(p)}
    if base is not None:
        e, elo, ehi = bootstrap_ci(p - base["p"][items], n=n_boot, seed=seed)
        out.update(effect=e, effect_low=elo, effect_high=ehi)
    both = ~torch.isnan(d["p_swapped"][items])
    out.update(letter_balance(d["p_first_row"][rows], d["p_orig"][items][both], d["p_swapped"][items][both]))
    prefers_first = d["p_first_row"][rows] > 0.5
    share = float(prefers_first.double().mean()) if prefers_first.numel() else 0.5
    out["majority_share"] = max(share, 1 - share)
    out["collapsed"] = bool(out["majority_share"] >= COLLAPSE_SHARE)
    return out


def neutral_rows(ctx: Context, texts: Sequence[str], prefix_style: PromptStyle) -> list[list[int]]:
    """Neutral texts as plain text, with a variant's instruction or examples before them."""
    model = ctx.model
    return [model.tokenizer(format_prompt(model, t, prefix_style), add_special_tokens=True)["input_ids"]
            for t in texts]


def neutral_base(ctx: Context, texts: Sequence[str]) -> torch.Tensor:
    """The unsteered model's next-token logits after each neutral text (plain, nothing before it)."""
    rows = neutral_rows(ctx, texts, PromptStyle(chat=False))
    return run_cells(ctx, rows, [0] * len(rows), [CellEdits()], lambda lg, sl: lg.float().cpu(),
                     "neutral baseline")[:, 0]


def neutral_pass(ctx: Context, texts: Sequence[str], prefix_style: PromptStyle, cells: Sequence[Cell],
                 base_logits: torch.Tensor) -> list[float]:
    """Per cell, the mean next-token KL (nats) on ``texts`` (with the variant's instruction or examples before
    them) to ``base_logits`` (:func:`neutral_base`); the edits apply at every token."""
    rows = neutral_rows(ctx, texts, prefix_style)
    edits, index = distinct_edits(cells)

    def kl(logits: torch.Tensor, sl: slice) -> torch.Tensor:
        b = base_logits[sl].to(logits.device)[:, None, :].expand_as(logits)
        return kl_from_logits(b, logits).float().cpu()

    per = run_cells(ctx, rows, [0] * len(rows), edits, kl, "neutral KL", edit_labels(cells, index, len(edits)))
    return [float(per[:, index[i]].mean()) for i in range(len(cells))]


def choice_prompts(ctx: Context, items: Sequence[dict[str, Any]], style: PromptStyle
                   ) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """A capability set's questions with lettered choices: per item the prompt tokens (shared by every answer
    letter), the first token of each letter, and the right answer's index."""
    model, rows, letters, answers = ctx.model, [], [], []
    for k, it in enumerate(items):
        choices = it["choices"]
        q = it["question"] + "\n" + "\n".join(f"({chr(65 + j)}) {c}" for j, c in enumerate(choices))
        toks = [model.tokenizer(with_answer(model, q, f"({chr(65 + j)})", style),
                                add_special_tokens=style.add_special_tokens())["input_ids"]
                for j in range(len(choices))]
        n = 0
        while all(n < len(t) for t in toks) and len({t[n] for t in toks}) == 1:
            n += 1
        if any(n >= len(t) for t in toks) or len({t[n] for t in toks}) != len(toks):
            raise InputError(f"capability item {k}: its answer letters do not differ in one token after a shared "
                             "prompt")
        rows.append(list(toks[0][:n]))
        letters.append([int(t[n]) for t in toks])
        answers.append(int(it["answer"]))
    return rows, letters, answers


def capability_pass(ctx: Context, items: Sequence[dict[str, Any]], style: PromptStyle, cells: Sequence[Cell]
                    ) -> list[float]:
    """Per cell, the accuracy on a multiple-choice capability set (argmax over the answer letters)."""
    rows, letters, answers = choice_prompts(ctx, items, style)
    starts = boundaries(ctx.model, rows, ctx.cfg.grid.positions)
    edits, index = distinct_edits(cells)
    width = max(len(x) for x in letters)
    lid = torch.tensor([x + [x[0]] * (width - len(x)) for x in letters])
    valid = torch.tensor([[j < len(x) for j in range(width)] for x in letters])
    ans = torch.tensor(answers)

    def right(logits: torch.Tensor, sl: slice) -> torch.Tensor:
        ids = lid[sl].to(logits.device)[:, None, :].expand(-1, logits.shape[1], -1)
        sc = logits.gather(-1, ids).masked_fill(~valid[sl].to(logits.device)[:, None, :], float("-inf"))
        return (sc.argmax(-1).cpu() == ans[sl][:, None]).float()

    per = run_cells(ctx, rows, starts, edits, right, "capability", edit_labels(cells, index, len(edits)))
    return [float(per[:, index[i]].mean()) for i in range(len(cells))]
