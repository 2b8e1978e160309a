"""Evaluating many steering settings ("cells") on the same prompts without recomputing what they share: the
KV-cache mechanics only (run the shared prefix once, repeat its cache per cell, crop it back); the additions
themselves are ordinary :class:`~actlab.hooks.additions.Add` interventions with a cells axis (one delta per row)
and explicit per-row starts, and the boundary is :func:`~actlab.hooks.positions.prompt_starts`, the one every
steering path uses.

A cell is a set of additions ``{hook point: vector}`` (already scaled; an empty cell is the unsteered run). When
every addition starts at a per-row boundary (``from_eoi``: the first end-of-instruction token, the CAA
protocol), the tokens before the boundary are the same in every cell: their KV cache is computed once per batch
of questions (unsteered) and each cell runs only the tokens from the boundary on. Several cells share one
forward, one row per (question, cell), each row getting its own addition. With the boundary at 0 (``all``
positions) nothing is cached, but cells are still batched.

The result equals the cell-by-cell computation (left-padded full prompts under :func:`~actlab.steering.steer`)
to floating-point round-off: the same tokens, positions and attention, split at the boundary.
Models whose cache cannot be cropped and repeated (``DynamicCache`` can) fall back to recomputing the prefix.
:func:`shared_prefix_generations` does the same for greedy generation: one row per (prompt, multiplier) over
one prefix cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.additions import Add
from ..hooks.points import HookPoint
from ..hooks.positions import check_steer_positions, prompt_starts
from ..progress import task as progress_task

if TYPE_CHECKING:
    from ..models.model import Model
    from .prompts import PromptStyle
    from .vector import SteeringVector

Cell = Mapping[HookPoint, torch.Tensor]


def boundaries(model: Model, rows: Sequence[Sequence[int]], positions: str) -> list[int]:
    """Per row, the first steered token under a steering position policy (:func:`prompt_starts`, per row, on the
    unpadded prompt): ``from_eoi`` the start of the (last) end-of-instruction sequence, ``all`` 0, ``auto`` the
    first where the row has it and 0 elsewhere, ``last:K`` the K-th last token."""
    from .apply import eoi_for

    check_steer_positions(positions)
    if positions == "generated":
        raise InputError("positions='generated' steers nothing in a one-forward evaluation of prompts; use "
                         "'auto', 'from_eoi' or 'all'")
    eoi = eoi_for(model, positions)
    out = []
    for k, r in enumerate(rows):
        ids = torch.tensor([list(r)])
        try:
            out.append(int(prompt_starts(positions, ids, torch.ones_like(ids), eoi)[0]))
        except InputError:
            raise InputError(f"prompt {k} does not contain the chat template's end-of-instruction tokens "
                             f"{eoi}; build it with the chat template or steer positions='all'") from None
    return out


def pad_rows(rows: Sequence[Sequence[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id rows padded to one width on ``side`` (``left``/``right``): ``(ids, attention mask)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[b, sl] = torch.tensor(list(r), dtype=torch.long)
        mask[b, sl] = 1
    return ids, mask


def _reusable(cache: object) -> bool:
    return all(hasattr(cache, a) for a in ("crop", "batch_repeat_interleave", "get_seq_length"))


def _prefix_cache(model: Model, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> object | None:
    """Run the (left-padded) prefixes once, unsteered, and return their KV cache with every row repeated
    ``repeats`` times in place; None when the model's cache cannot be repeated and cropped."""
    out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=True,
                **({"logits_to_keep": 1} if model.accepts_logits_to_keep else {}))
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if not _reusable(cache):
        return None
    cache.batch_repeat_interleave(repeats)
    return cache


def _cells_addition(group: Sequence[Cell], points: Sequence[HookPoint], model: Model, q: int, starts: list[int],
                    labels: Sequence[Mapping[str, Any]], source: Mapping[str, Any]) -> Add | None:
    """One :class:`Add` for ``q`` prompts x ``len(group)`` cells, row ``qi * k + ci`` holding cell ``ci``'s
    additions (``k`` rows per prompt: the last group may fill fewer)."""
    k = len(starts) // q
    deltas = {}
    for p in points:
        d = None
        for ci, cell in enumerate(group):
            if p in cell:
                if d is None:
                    d = torch.zeros(q * k, p.width(model), dtype=torch.float64)
                d[ci::k] = cell[p].detach().double().cpu().reshape(1, -1)
        if d is not None:
            deltas[p] = d
    if not deltas:
        return None
    return Add(deltas, starts=starts, cells=list(labels), source=source)


@torch.no_grad()
def iter_cell_logits(model: Model, rows: Sequence[Sequence[int]], starts: Sequence[int], cells: Sequence[Cell], *,
                     batch_size: int = 16, cells_per_batch: int = 4, first_row: int = 0,
                     stop_row: int | None = None,
                     reduce: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
                     labels: Sequence[Mapping[str, Any]] | None = None, source: Mapping[str, Any] | None = None,
                     ) -> Iterator[tuple[slice, torch.Tensor]]:
    """Next-token logits after each row of token ids under each cell, ``batch_size`` rows at a time: yields
    ``(rows slice, tensor [rows, n_cells, ...])``, the logits ``[rows, n_cells, vocab]`` (float32) passed
    through ``reduce(logits, rows slice)`` when given (keep only what is needed: two answer tokens, a score).
    Additions apply from ``starts[row]`` on (every later token of the row); the prefix before it is computed
    once per batch and reused by every cell when ``all(starts) > 0``. Rows ``first_row`` to ``stop_row``
    only, when given (resuming part way; a rank's share). ``labels`` describe each cell in the run record
    (default: its index and points); ``source`` is added to it (the vector's provenance, the policy)."""
    if not cells:
        raise InputError("no steering cell to evaluate")
    if len(rows) != len(starts):
        raise InputError(f"{len(rows)} prompts but {len(starts)} boundaries")
    if batch_size < 1 or cells_per_batch < 1:
        raise InputError(f"batch_size and cells_per_batch must be >= 1, got {batch_size} and {cells_per_batch}")
    for k, (r, s) in enumerate(zip(rows, starts, strict=True)):
        if not 0 <= s < len(r):
            raise InputError(f"prompt {k}: boundary {s} is outside its {len(r)} tokens")
    labels = list(labels) if labels is not None else [
        {"cell": i, "points": sorted(p.name for p in c)} for i, c in enumerate(cells)]
    if len(labels) != len(cells):
        raise InputError(f"{len(cells)} cells but {len(labels)} labels")
    points = sorted({p for c in cells for p in c}, key=lambda p: (p.layer, p.kind))
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    dev = model.device
    last = HookPoint(model.n_layers - 1, "resid_post")
    k = min(cells_per_batch, len(cells))
    use_prefix = all(s > 0 for s in starts)
    stop = len(rows) if stop_row is None else min(stop_row, len(rows))
    for s0 in range(first_row, stop, batch_size):
        sl = slice(s0, min(s0 + batch_size, stop))
        chunk, st = rows[sl], starts[sl]
        q = len(chunk)
        cache = None
        if use_prefix:
            p_ids, p_mask = pad_rows([r[:b] for r, b in zip(chunk, st, strict=True)], pad, "left")
            cache = _prefix_cache(model, p_ids, p_mask, k)
        if cache is not None:  # the suffixes, right-padded after the shared prefix: steered from its first token
            s_ids, s_mask = pad_rows([r[b:] for r, b in zip(chunk, st, strict=True)], pad, "right")
            p_mask_k = p_mask.repeat_interleave(k, 0)
            pos = p_mask_k.sum(1, keepdim=True) + torch.arange(s_ids.shape[1])[None, :]
            row_starts = [p_ids.shape[1]] * (q * k)
        else:  # whole prompts; the additions still start at each row's boundary
            s_ids, s_mask = pad_rows(chunk, pad, "right")
            pos = None
            row_starts = [b for b in st for _ in range(k)]
        ids_k, mask_k = s_ids.repeat_interleave(k, 0), s_mask.repeat_interleave(k, 0)
        results = []
        for g in range(0, len(cells), k):
            add = _cells_addition(cells[g:g + k], points, model, q, row_starts, labels[g:g + k], source or {})
            kw: dict = {"use_cache": cache is not None}
            if model.accepts_logits_to_keep:
                kw["logits_to_keep"] = 1
            if cache is not None:
                kw.update({model.cache_argument: cache}, position_ids=pos.to(dev),
                          attention_mask=torch.cat([p_mask_k, mask_k], 1).to(dev))
            else:
                kw["attention_mask"] = mask_k.to(dev)
            with model.capture(last, positions="last", dtype=None, device=dev) as acts, \
                    model.edit(*([add] if add is not None else [])):
                model(input_ids=ids_k.to(dev), **kw)
            if cache is not None:
                cache.crop(-ids_k.shape[1])  # back to the prefix (negative: tokens to drop; 4.x and 5.x)
            n_group = len(cells[g:g + k])
            logits = model.unembed(acts[last.name].to(dev)).float().view(q, k, -1)[:, :n_group]
            results.append(reduce(logits, sl) if reduce is not None else logits.cpu())
        yield sl, torch.cat(results, 1).cpu()


def cell_logits(model: Model, rows: Sequence[Sequence[int]], starts: Sequence[int], cells: Sequence[Cell],
                **kw) -> torch.Tensor:
    """All of :func:`iter_cell_logits` at once: ``[rows, n_cells, ...]``."""
    return torch.cat([t for _, t in iter_cell_logits(model, rows, starts, cells, **kw)])


@torch.no_grad()
def shared_prefix_generations(model: Model, texts: Sequence[str], vector: SteeringVector, *, layers: Sequence[int],
                              multipliers: Sequence[float], style: PromptStyle, max_new_tokens: int = 40,
                              batch_size: int = 8) -> dict[float, list[str]] | None:
    """Greedy generations of formatted prompts at every multiplier, steered (``from_eoi``) at ``layers``: each
    batch's tokens before the end of instruction run once, unsteered, and their KV cache is repeated for one
    row per (prompt, multiplier), each row adding its own multiple from the boundary on. Returns None when
    the model's cache cannot be shared (the caller then generates multiplier by multiplier)."""
    rows = [model.tokenizer(t, add_special_tokens=style.add_special_tokens())["input_ids"] for t in texts]
    starts = boundaries(model, rows, "from_eoi")
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    mults = [float(m) for m in multipliers]
    k, dev = len(mults), model.device
    out: dict[float, list[str]] = {m: [] for m in mults}
    vecs = {HookPoint(layer, vector.point): vector[layer] for layer in layers}
    with progress_task("generating", total=k * len(texts), unit="prompts") as task:
        for s0 in range(0, len(rows), batch_size):
            chunk, st = rows[s0:s0 + batch_size], starts[s0:s0 + batch_size]
            q = len(chunk)
            p_ids, p_mask = pad_rows([r[:b] for r, b in zip(chunk, st, strict=True)], pad, "left")
            s_ids, s_mask = pad_rows([r[b:] for r, b in zip(chunk, st, strict=True)], pad, "left")
            cache = _prefix_cache(model, p_ids, p_mask, k)
            if cache is None:
                return None
            ids = torch.cat([p_ids, s_ids], 1).repeat_interleave(k, 0).to(dev)
            mask = torch.cat([p_mask, s_mask], 1).repeat_interleave(k, 0).to(dev)
            add = Add(vecs, mults * q, starts=[p_ids.shape[1]] * (q * k), cells=[{"multiplier": m} for m in mults],
                      source={"positions": "from_eoi", **vector.provenance()})
            with model.edit(add):
                gen = model.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=False,
                                     **{model.cache_argument: cache})
            decoded = model.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
            for qi in range(q):
                for ci, m in enumerate(mults):
                    out[m].append(decoded[qi * k + ci])
            task.advance(q * k)
    return out


__all__ = ["Cell", "boundaries", "cell_logits", "iter_cell_logits", "pad_rows", "shared_prefix_generations"]
