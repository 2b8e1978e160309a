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

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.additions import Add
from ..hooks.directions import ProjectOut, Rotate
from ..hooks.interventions import Intervention
from ..hooks.points import HookPoint
from ..hooks.positions import check_steer_positions, prompt_starts
from ..progress import task as progress_task

if TYPE_CHECKING:
    from ..models.model import Model
    from .prompts import PromptStyle
    from .vector import SteeringVector

@dataclass(frozen=True)
class CellEdits:
    """What one cell does to the model: additions at hook points (already scaled), a rotation at one point
    (``(point, unit direction, degrees, mode)``), and/or a directional ablation (``(direction, layers)``, layers
    None for every layer). A plain mapping ``{point: vector}`` is a cell of additions. An ablation acts at every
    token, the prompt's included, so cells with one never share an unsteered prefix."""

    add: Mapping[HookPoint, torch.Tensor] = field(default_factory=dict)
    rotate: tuple[HookPoint, torch.Tensor, float, str] | None = None
    ablate: tuple[torch.Tensor, tuple[int, ...] | None] | None = None

    def signature(self) -> tuple:
        """Cells with one signature build the same interventions (with per-row values): they share a forward.
        Additions at different points share one too (a row adds zero where its cell has nothing: exact)."""
        rot = (self.rotate[0], self.rotate[3]) if self.rotate is not None else None
        abl = self.ablate[1] if self.ablate is not None else "none"
        return (bool(self.add), rot, abl)


Cell = Mapping[HookPoint, torch.Tensor] | CellEdits


def as_cell(cell: Cell) -> CellEdits:
    return cell if isinstance(cell, CellEdits) else CellEdits(add=dict(cell))


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


_EXACT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prefix_reuse_exact(model: Model) -> bool:
    """Whether this model reproduces whole prompts from a shared prefix cache (checked once per model on two
    ragged probe rows, a few tokens each; remembered). Some wrappers build their attention masks themselves
    and mishandle the padding hole a batch of ragged suffixes leaves (Gemma-3's multimodal checkpoints, found
    by the support matrix): those evaluate whole prompts instead, with the same numbers."""
    key = model.hf
    if key in _EXACT:
        return bool(_EXACT[key])
    _EXACT[key] = True  # the probe itself runs the shared path
    v = model.vocab_size
    rows = [[(3 + 7 * i) % v for i in range(9)], [(5 + 11 * i) % v for i in range(6)]]
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    ids, mask = pad_rows(rows, pad, "left")
    with torch.no_grad():
        plain = model.last_logits(ids.to(model.device), mask.to(model.device)).float().cpu()
        try:
            shared = torch.cat([t for _, t in iter_cell_logits(model, rows, [5, 3], [{}], batch_size=2,
                                                               cells_per_batch=1)])[:, 0]
            why = f"largest logit difference {float((shared - plain).abs().max()):.3g}"
            ok = bool(torch.allclose(shared, plain, rtol=1e-3, atol=1e-3 * (1 + float(plain.abs().max()))))
        except Exception as e:  # a cache that cannot be cropped or repeated (a hybrid's linear-attention
            # layers; transformers 4.x's Qwen3-Next cache raises IndexError): whole prompts instead
            why, ok = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}", False
    _EXACT[key] = ok
    if not ok:
        from ..progress import info

        info(f"{model.name}: a shared prefix cache does not reproduce whole prompts with this model ({why}); "
             "evaluating whole prompts instead")
    return ok


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


def _groups(cells: Sequence[CellEdits], k: int) -> list[list[int]]:
    """The cells' indices grouped by signature (in order of first appearance), at most ``k`` to a group."""
    by: dict[tuple, list[int]] = {}
    for i, c in enumerate(cells):
        by.setdefault(c.signature(), []).append(i)
    return [idx[s:s + k] for idx in by.values() for s in range(0, len(idx), k)]


def cell_interventions(group: Sequence[CellEdits], model: Model, q: int, k: int, starts: list[int],
                       labels: Sequence[Mapping[str, Any]], source: Mapping[str, Any]) -> list[Intervention]:
    """The interventions of ``q`` prompts x ``k`` rows, row ``qi * k + ci`` holding cell ``ci``'s edits (a group
    may fill fewer than ``k`` cells: the other rows are left unsteered and discarded). Additions, rotations and
    ablations each become one intervention with a value per row."""
    first = group[0]
    out: list[Intervention] = []
    meta = {"cells": [dict(x) for x in labels], **source}
    if first.add:
        deltas = {}
        points = sorted({p for cell in group for p in cell.add}, key=lambda p: (p.layer, p.kind))
        for p in points:
            d = torch.zeros(q * k, p.width(model), dtype=torch.float64)
            for ci, cell in enumerate(group):
                if p in cell.add:
                    d[ci::k] = cell.add[p].detach().double().cpu().reshape(1, -1)
            deltas[p] = d
        out.append(Add(deltas, starts=starts, cells=meta.pop("cells"), source=meta))
    if first.rotate is not None:
        point, _, _, mode = first.rotate
        dirs = torch.stack([c.rotate[1].detach().double().reshape(-1) for c in group])  # type: ignore[index]
        angles = [float(c.rotate[2]) for c in group]  # type: ignore[index]
        row_dirs = torch.stack([dirs[min(ci, len(group) - 1)] for _ in range(q) for ci in range(k)])
        row_angles = [angles[ci] if ci < len(group) else 0.0 for _ in range(q) for ci in range(k)]
        out.append(Rotate(row_dirs, row_angles, mode=mode, layers=[point.layer], kind=point.kind, starts=starts,
                          source={"cells": [dict(x) for x in labels], **source}))
    if first.ablate is not None:
        _, layers = first.ablate
        dirs = torch.stack([c.ablate[0].detach().double().reshape(-1) for c in group])  # type: ignore[index]
        row_dirs = torch.stack([dirs[min(ci, len(group) - 1)] for _ in range(q) for ci in range(k)])
        out.append(ProjectOut(row_dirs, layers=list(layers) if layers is not None else None,
                              source={"cells": [dict(x) for x in labels], **source}))
    return out


@dataclass
class _Batch:
    """One batch of prompts laid out for ``k`` rows per prompt: with the shared prefix (``cache`` set: the
    suffixes right-padded after it, steered from its first token) or whole (right-padded, steered from each
    row's boundary)."""

    ids: torch.Tensor
    mask: torch.Tensor
    starts: list[int]
    cache: Any = None
    prefix_mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None


def _whole(chunk: Sequence[Sequence[int]], st: Sequence[int], k: int, pad: int) -> _Batch:
    ids, mask = pad_rows(chunk, pad, "right")
    return _Batch(ids.repeat_interleave(k, 0), mask.repeat_interleave(k, 0), [b for b in st for _ in range(k)])


def _with_prefix(model: Model, chunk: Sequence[Sequence[int]], st: Sequence[int], k: int, pad: int) -> _Batch | None:
    p_ids, p_mask = pad_rows([r[:b] for r, b in zip(chunk, st, strict=True)], pad, "left")
    cache = _prefix_cache(model, p_ids, p_mask, k)
    if cache is None:
        return None
    s_ids, s_mask = pad_rows([r[b:] for r, b in zip(chunk, st, strict=True)], pad, "right")
    p_mask_k = p_mask.repeat_interleave(k, 0)
    pos = p_mask_k.sum(1, keepdim=True) + torch.arange(s_ids.shape[1])[None, :]
    return _Batch(s_ids.repeat_interleave(k, 0), s_mask.repeat_interleave(k, 0), [p_ids.shape[1]] * (len(chunk) * k),
                  cache, p_mask_k, pos)


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
    Edits apply from ``starts[row]`` on (every later token of the row); the prefix before it is computed
    once per batch and reused by every cell when ``all(starts) > 0`` (not by ablation cells, which act on the
    prefix too). Cells of one kind share a forward, ``cells_per_batch`` at a time. Rows ``first_row`` to
    ``stop_row`` only, when given (resuming part way; a rank's share). ``labels`` describe each cell in the run
    record (default: its index and points); ``source`` is added to it (the vector's provenance, the policy)."""
    if not cells:
        raise InputError("no steering cell to evaluate")
    if len(rows) != len(starts):
        raise InputError(f"{len(rows)} prompts but {len(starts)} boundaries")
    if batch_size < 1 or cells_per_batch < 1:
        raise InputError(f"batch_size and cells_per_batch must be >= 1, got {batch_size} and {cells_per_batch}")
    for k, (r, s) in enumerate(zip(rows, starts, strict=True)):
        if not 0 <= s < len(r):
            raise InputError(f"prompt {k}: boundary {s} is outside its {len(r)} tokens")
    edits = [as_cell(c) for c in cells]
    labels = list(labels) if labels is not None else [
        {"cell": i, "points": sorted(p.name for p in c.add)} for i, c in enumerate(edits)]
    if len(labels) != len(edits):
        raise InputError(f"{len(edits)} cells but {len(labels)} labels")
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    dev = model.device
    last = HookPoint(model.n_layers - 1, "resid_post")
    k = min(cells_per_batch, len(edits))
    groups = _groups(edits, k)
    use_prefix = all(s > 0 for s in starts) and any(c.ablate is None for c in edits) and prefix_reuse_exact(model)
    stop = len(rows) if stop_row is None else min(stop_row, len(rows))
    for s0 in range(first_row, stop, batch_size):
        sl = slice(s0, min(s0 + batch_size, stop))
        chunk, st = rows[sl], starts[sl]
        q = len(chunk)
        shared = _with_prefix(model, chunk, st, k, pad) if use_prefix else None
        whole: _Batch | None = None
        results: list[torch.Tensor | None] = [None] * len(edits)
        for idx in groups:
            group = [edits[i] for i in idx]
            if shared is not None and group[0].ablate is None:
                b = shared
            else:
                whole = whole or _whole(chunk, st, k, pad)
                b = whole
            ivs = cell_interventions(group, model, q, k, b.starts, [labels[i] for i in idx], source or {})
            kw: dict = {"use_cache": b.cache is not None}
            if model.accepts_logits_to_keep:
                kw["logits_to_keep"] = 1
            if b.cache is not None:
                assert b.positions is not None and b.prefix_mask is not None
                # a copy per forward: some models shift the ids in place (XGLM on transformers 4.x adds its offset)
                kw.update({model.cache_argument: b.cache}, position_ids=b.positions.to(dev, copy=True),
                          attention_mask=torch.cat([b.prefix_mask, b.mask], 1).to(dev))
            else:
                kw["attention_mask"] = b.mask.to(dev)
            with model.capture(last, positions="last", dtype=None, device=dev) as acts, model.edit(*ivs):
                model(input_ids=b.ids.to(dev), **kw)
            if b.cache is not None:
                b.cache.crop(-b.ids.shape[1])  # back to the prefix (negative: tokens to drop; 4.x and 5.x)
            logits = model.unembed(acts[last.name].to(dev)).float().view(q, k, -1)[:, :len(group)]
            got = reduce(logits, sl) if reduce is not None else logits.cpu()
            for j, i in enumerate(idx):
                results[i] = got[:, j:j + 1]
        yield sl, torch.cat([r for r in results if r is not None], 1).cpu()


def cell_logits(model: Model, rows: Sequence[Sequence[int]], starts: Sequence[int], cells: Sequence[Cell],
                **kw) -> torch.Tensor:
    """All of :func:`iter_cell_logits` at once: ``[rows, n_cells, ...]``."""
    return torch.cat([t for _, t in iter_cell_logits(model, rows, starts, cells, **kw)])


@torch.no_grad()
def cell_generations(model: Model, texts: Sequence[str], cells: Sequence[Cell], *, add_special_tokens: bool,
                     positions: str = "auto", max_new_tokens: int = 40, batch_size: int = 8, cells_per_batch: int = 8,
                     labels: Sequence[Mapping[str, Any]] | None = None, source: Mapping[str, Any] | None = None,
                     strict: bool = True, share_prefix: bool = True) -> list[list[str]] | None:
    """Greedy generations of every prompt under every cell (``[prompt][cell]``), the cells as rows of one
    ``generate()`` per group: with a boundary inside every prompt (``from_eoi``), each batch's tokens before it run
    once, unsteered, and their KV cache is repeated for one row per (prompt, cell); ablation cells (and prompts
    steered from their first token) generate from whole prompts. The texts equal one ``generate()`` per cell
    (tested). Returns None when the model's cache cannot be shared and ``strict`` is False (the caller then
    generates cell by cell, or again with ``share_prefix=False``: whole prompts, the cells still batched)."""
    edits = [as_cell(c) for c in cells]
    labels = list(labels) if labels is not None else [{"cell": i} for i in range(len(edits))]
    rows = [model.tokenizer(t, add_special_tokens=add_special_tokens)["input_ids"] for t in texts]
    starts = boundaries(model, rows, positions)
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    dev = model.device
    k = min(cells_per_batch, len(edits))
    groups = _groups(edits, k)
    out: list[list[str]] = [[""] * len(edits) for _ in texts]
    with progress_task("generating", total=len(edits) * len(texts), unit="generations") as task:
        for s0 in range(0, len(rows), batch_size):
            chunk, st = rows[s0:s0 + batch_size], starts[s0:s0 + batch_size]
            q = len(chunk)
            for idx in groups:
                group = [edits[i] for i in idx]
                n = len(group)
                kw: dict[str, Any] = {}
                if share_prefix and all(b > 0 for b in st) and group[0].ablate is None:
                    p_ids, p_mask = pad_rows([r[:b] for r, b in zip(chunk, st, strict=True)], pad, "left")
                    s_ids, s_mask = pad_rows([r[b:] for r, b in zip(chunk, st, strict=True)], pad, "left")
                    cache = _prefix_cache(model, p_ids, p_mask, n)
                    if cache is None:
                        if not strict:
                            return None
                        raise InputError(f"{model.name!r} has a KV cache that cannot be shared between rows")
                    ids = torch.cat([p_ids, s_ids], 1)
                    mask = torch.cat([p_mask, s_mask], 1)
                    row_starts = [p_ids.shape[1]] * (q * n)
                    kw[model.cache_argument] = cache
                else:  # whole prompts, left-padded: each row steered from its own boundary on
                    ids, mask = pad_rows(chunk, pad, "left")
                    row_starts = [ids.shape[1] - len(r) + b for r, b in zip(chunk, st, strict=True) for _ in range(n)]
                ids_k, mask_k = ids.repeat_interleave(n, 0).to(dev), mask.repeat_interleave(n, 0).to(dev)
                ivs = cell_interventions(group, model, q, n, row_starts, [labels[i] for i in idx], source or {})
                with model.edit(*ivs):
                    gen = model.generate(ids_k, mask_k, max_new_tokens=max_new_tokens, do_sample=False, **kw)
                decoded = model.tokenizer.batch_decode(gen[:, ids_k.shape[1]:], skip_special_tokens=True)
                for qi in range(q):
                    for ci, i in enumerate(idx):
                        out[s0 + qi][i] = decoded[qi * n + ci]
                task.advance(q * n)
    return out


def shared_prefix_generations(model: Model, texts: Sequence[str], vector: SteeringVector, *, layers: Sequence[int],
                              multipliers: Sequence[float], style: PromptStyle, max_new_tokens: int = 40,
                              batch_size: int = 8) -> dict[float, list[str]] | None:
    """Greedy generations of formatted prompts at every multiplier, steered (``from_eoi``) at ``layers``: one row
    per (prompt, multiplier) over one shared prefix (:func:`cell_generations`). Returns None when the model's
    cache cannot be shared (the caller then generates multiplier by multiplier)."""
    mults = [float(m) for m in multipliers]
    cells = [CellEdits(add={HookPoint(layer, vector.point): m * vector[layer].double() for layer in layers})
             for m in mults]
    got = cell_generations(model, texts, cells, add_special_tokens=style.add_special_tokens(), positions="from_eoi",
                           max_new_tokens=max_new_tokens, batch_size=batch_size, cells_per_batch=len(mults),
                           labels=[{"multiplier": m} for m in mults],
                           source={"positions": "from_eoi", **vector.provenance()}, strict=False)
    if got is None:
        return None
    return {m: [row[j] for row in got] for j, m in enumerate(mults)}


__all__ = ["Cell", "CellEdits", "boundaries", "cell_generations", "cell_logits", "iter_cell_logits", "pad_rows",
           "shared_prefix_generations"]
