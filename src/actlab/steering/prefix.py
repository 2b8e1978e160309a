"""Evaluating many steering settings ("cells") on the same prompts without recomputing what they share.

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
from typing import TYPE_CHECKING

import torch

from ..errors import InputError
from ..hooks.interventions import Hook, eoi_start
from ..hooks.points import HookPoint
from ..progress import task as progress_task

if TYPE_CHECKING:
    from ..models.model import Model
    from .prompts import PromptStyle
    from .vector import SteeringVector

Cell = Mapping[HookPoint, torch.Tensor]


def boundaries(model: Model, rows: Sequence[Sequence[int]], positions: str) -> list[int]:
    """Per row, the first steered token: the start of the (last) end-of-instruction sequence for ``from_eoi``,
    0 for ``all``; ``auto`` as steering reads it: ``from_eoi`` in rows that have the sequence, 0 in the others
    (and everywhere for a model without a chat template)."""
    if positions == "all":
        return [0] * len(rows)
    if positions not in ("from_eoi", "auto"):
        raise InputError(f"prefix reuse steers from a boundary: positions 'from_eoi', 'auto' or 'all', not "
                         f"{positions!r}")
    from .apply import default_eoi_ids

    if positions == "auto":
        if getattr(model.tokenizer, "chat_template", None) is None:
            return [0] * len(rows)
        eoi = default_eoi_ids(model)
        return [int(eoi_start(torch.tensor([list(r)]), eoi, missing=0)[0]) for r in rows]
    eoi = default_eoi_ids(model)
    out = []
    for k, r in enumerate(rows):
        try:
            out.append(int(eoi_start(torch.tensor([list(r)]), eoi)[0]))
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


def _row_adder(delta: torch.Tensor, where: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x + delta[row]`` at every token of a call, or only where ``where`` ``[rows, seq]`` is true (the first
    call: the whole prompt when its prefix could not be cached)."""
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def add(x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        d = cache.get(key)
        if d is None:
            d = delta.to(device=x.device, dtype=x.dtype)[:, None, :]
            if where is not None:
                d = d * where.to(device=x.device, dtype=x.dtype)[..., None]
            cache[key] = d
        return x + d

    add.__name__ = "cell_additions"
    return add


def _cache_kwarg(model: Model) -> str:
    """The forward's name for the KV cache: ``cache`` in transformers 5, ``past_key_values`` before."""
    import inspect

    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _reusable(cache: object) -> bool:
    return all(hasattr(cache, a) for a in ("crop", "batch_repeat_interleave", "get_seq_length"))


def _prefix_cache(model: Model, ids: torch.Tensor, mask: torch.Tensor, repeats: int) -> object | None:
    """Run the (left-padded) prefixes once, unsteered, and return their KV cache with every row repeated
    ``repeats`` times in place; None when the model's cache cannot be repeated and cropped."""
    out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=True,
                **({"logits_to_keep": 1} if model._accepts_logits_to_keep() else {}))
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if not _reusable(cache):
        return None
    cache.batch_repeat_interleave(repeats)
    return cache


@torch.no_grad()
def iter_cell_logits(model: Model, rows: Sequence[Sequence[int]], starts: Sequence[int], cells: Sequence[Cell], *,
                     batch_size: int = 16, cells_per_batch: int = 4, first_row: int = 0,
                     stop_row: int | None = None,
                     reduce: Callable[[torch.Tensor, slice], torch.Tensor] | None = None,
                     ) -> Iterator[tuple[slice, torch.Tensor]]:
    """Next-token logits after each row of token ids under each cell, ``batch_size`` rows at a time: yields
    ``(rows slice, tensor [rows, n_cells, ...])``, the logits ``[rows, n_cells, vocab]`` (float32) passed
    through ``reduce(logits, rows slice)`` when given (keep only what is needed: two answer tokens, a score).
    Additions apply from ``starts[row]`` on (every later token of the row); the prefix before it is computed
    once per batch and reused by every cell when ``all(starts) > 0``. Rows ``first_row`` to ``stop_row``
    only, when given (resuming part way; a rank's share)."""
    if not cells:
        raise InputError("no steering cell to evaluate")
    if len(rows) != len(starts):
        raise InputError(f"{len(rows)} prompts but {len(starts)} boundaries")
    if batch_size < 1 or cells_per_batch < 1:
        raise InputError(f"batch_size and cells_per_batch must be >= 1, got {batch_size} and {cells_per_batch}")
    for k, (r, s) in enumerate(zip(rows, starts, strict=True)):
        if not 0 <= s < len(r):
            raise InputError(f"prompt {k}: boundary {s} is outside its {len(r)} tokens")
    points = sorted({p for c in cells for p in c}, key=lambda p: (p.layer, p.kind))
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    dev = model.device
    last = HookPoint(model.n_layers - 1, "resid_post")
    k = min(cells_per_batch, len(cells))
    use_prefix = all(s > 0 for s in starts)
    cache_kw = _cache_kwarg(model)
    stop = len(rows) if stop_row is None else min(stop_row, len(rows))
    for s0 in range(first_row, stop, batch_size):
        sl = slice(s0, min(s0 + batch_size, stop))
        chunk, st = rows[sl], starts[sl]
        q = len(chunk)
        cache = None
        if use_prefix:
            p_ids, p_mask = pad_rows([r[:b] for r, b in zip(chunk, st, strict=True)], pad, "left")
            cache = _prefix_cache(model, p_ids, p_mask, k)
        if cache is not None:
            s_ids, s_mask = pad_rows([r[b:] for r, b in zip(chunk, st, strict=True)], pad, "right")
            p_mask_k = p_mask.repeat_interleave(k, 0)
            pos = p_mask_k.sum(1, keepdim=True) + torch.arange(s_ids.shape[1])[None, :]
            where = None
        else:  # whole prompts; the additions still start at each row's boundary
            s_ids, s_mask = pad_rows(chunk, pad, "right")
            pos = None
            where = (torch.arange(s_ids.shape[1])[None, :] >= torch.tensor(list(st))[:, None]).repeat_interleave(k, 0)
        ids_k, mask_k = s_ids.repeat_interleave(k, 0), s_mask.repeat_interleave(k, 0)
        results = []
        for g in range(0, len(cells), k):
            group = cells[g:g + k]
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
            kw: dict = {"use_cache": cache is not None}
            if model._accepts_logits_to_keep():
                kw["logits_to_keep"] = 1
            if cache is not None:
                kw.update({cache_kw: cache}, position_ids=pos.to(dev),
                          attention_mask=torch.cat([p_mask_k, mask_k], 1).to(dev))
            else:
                kw["attention_mask"] = mask_k.to(dev)
            with model.capture(last, positions="last", dtype=None, device=dev) as acts, \
                    model.edit(*[Hook(p, _row_adder(d, where)) for p, d in deltas.items()]):
                model(input_ids=ids_k.to(dev), **kw)
            if cache is not None:
                cache.crop(-ids_k.shape[1])  # back to the prefix (negative: tokens to drop; 4.x and 5.x)
            logits = model.unembed(acts[last.name].to(dev)).float().view(q, k, -1)[:, :len(group)]
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
            hooks = []
            for layer in layers:
                d = torch.zeros(q * k, vector[layer].numel(), dtype=torch.float64)
                for ci, m in enumerate(mults):
                    d[ci::k] = m * vector[layer].double().reshape(1, -1)
                hooks.append(Hook(HookPoint(layer, vector.point), _row_adder(d)))
            with model.edit(*hooks):
                gen = model.generate(ids, mask, max_new_tokens=max_new_tokens, do_sample=False,
                                     **{_cache_kwarg(model): cache})
            decoded = model.tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
            for qi in range(q):
                for ci, m in enumerate(mults):
                    out[m].append(decoded[qi * k + ci])
            task.advance(q * k)
    return out


__all__ = ["Cell", "boundaries", "cell_logits", "iter_cell_logits", "pad_rows", "shared_prefix_generations"]
