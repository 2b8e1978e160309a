"""Activation patching and attribution patching over layers x positions x hook-point kinds, and per head.

*Activation patching* runs the corrupted input with one activation (a point at one position, or one head's
``attn.z`` at every position) replaced by its value in the clean run and reports the metric; many patches
run as rows of one batch. *Attribution patching* approximates every one of those numbers at once from one
corrupted forward and one backward: ``(clean - corrupt) . d metric / d activation`` at each point and
position (Nanda, "Attribution patching", 2023). Both return a :class:`PatchResult` whose grids are
``[layer, position]`` (or ``[layer, head]``) per kind, raw and normalised so that 0 is the corrupted run's
metric and 1 the clean run's.

The metric reads the logits at the last position (``[batch, vocab] -> [batch]``); the default is the logit
difference between an answer token and a wrong token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .errors import InputError
from .hooks.interventions import Hook, Intervention
from .hooks.points import HEAD_KINDS, HookPoint, parse_points

if TYPE_CHECKING:
    from .models.model import Model

Metric = Callable[[torch.Tensor], torch.Tensor]


def logit_diff(answer: int, wrong: int) -> Metric:
    """``logit[answer] - logit[wrong]`` per row (the default patching metric)."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, answer] - logits[:, wrong]

    metric.__name__ = f"logit_diff({answer}, {wrong})"
    return metric


@dataclass
class PatchResult:
    """Per kind, a grid of metric values (``[n_layers, n_positions]`` or ``[n_layers, n_heads]``)."""

    method: str  # "activation" or "attribution"
    axis: str  # "position" or "head"
    layers: list[int]
    tokens: list[str]
    clean_metric: float
    corrupt_metric: float
    grids: dict[str, torch.Tensor] = field(default_factory=dict)

    def normalised(self, kind: str) -> torch.Tensor:
        """0 = the corrupted run's metric, 1 = the clean run's (attribution: the estimated change, same scale)."""
        span = self.clean_metric - self.corrupt_metric
        if abs(span) < 1e-12:
            raise InputError("the clean and corrupted runs give the same metric: nothing to attribute")
        base = 0.0 if self.method == "attribution" else self.corrupt_metric
        return (self.grids[kind] - base) / span

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "patching", "method": self.method, "axis": self.axis, "layers": self.layers,
                "tokens": self.tokens, "clean_metric": self.clean_metric, "corrupt_metric": self.corrupt_metric,
                "grids": {k: [[round(float(x), 6) for x in row] for row in g.tolist()] for k, g in self.grids.items()},
                "normalised": {k: [[round(float(x), 6) for x in row] for row in self.normalised(k).tolist()]
                               for k in self.grids}}


def _ids(model: Model, x: str | torch.Tensor) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        ids = x.reshape(1, -1) if x.dim() == 1 else x
        if ids.shape[0] != 1:
            raise InputError(f"give one clean and one corrupted prompt, not a batch of {ids.shape[0]}")
        return ids.to(model.device)
    if not isinstance(x, str) or not x:
        raise InputError("a patching prompt must be non-empty text or token ids")
    return model.tokenize(x)["input_ids"].to(model.device)


def _inputs(model: Model, clean: str | torch.Tensor, corrupt: str | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c, x = _ids(model, clean), _ids(model, corrupt)
    if c.shape != x.shape:
        raise InputError(f"the clean and corrupted prompts must have the same number of tokens to patch position "
                         f"by position; they have {c.shape[1]} and {x.shape[1]}")
    return c, x


def _points(model: Model, kinds: str | Iterable[str], layers: str | Iterable[int] | None) -> list[HookPoint]:
    """Per-layer kinds (``resid_pre``, ``attn.z``...) at ``layers``, or full point names (``blocks.3.mlp_out``)."""
    from .hooks.points import layer_list, point

    names = [kinds] if isinstance(kinds, str) else list(kinds)
    names = [k.strip() for n in names for k in n.split(",") if k.strip()]
    if not names:
        raise InputError("no hook-point kind to patch; e.g. resid_pre,attn_out,mlp_out or attn.z")
    lay = layer_list(layers, model.n_layers)
    pts: list[HookPoint] = []
    for k in names:
        pts += parse_points(k, model.n_layers) if k.startswith("blocks.") else [point(i, k) for i in lay]
    bad = [p.name for p in pts if p.kind == "attn.pattern" or p.layer is None]
    if bad:
        raise InputError(f"cannot patch {bad[0]}: patch per-layer activations (attention through "
                         "attn.z/attn.q/attn.k/attn.v, not the pattern)")
    return list(dict.fromkeys(pts))


def _logits(model: Model, ids: torch.Tensor, edits: Sequence[Intervention]) -> torch.Tensor:
    with model.edit(*edits):
        return model(input_ids=ids, use_cache=False).logits[:, -1, :].float()


def _clean_run(model: Model, ids: torch.Tensor, pts: list[HookPoint], metric: Metric
               ) -> tuple[dict[str, torch.Tensor], float]:
    """The clean run's activations at ``pts`` and its metric, from one forward."""
    with torch.no_grad(), model.capture(pts, positions="all", dtype=None, device=model.device) as acts:
        logits = model(input_ids=ids, use_cache=False).logits[:, -1, :].float()
    return {p.name: acts[p.name] for p in pts}, float(metric(logits)[0])


def activation_patching(model: Model, clean: str | torch.Tensor, corrupt: str | torch.Tensor, metric: Metric, *,
                        kinds: str | Iterable[str] = "resid_pre", layers: str | Iterable[int] | None = None,
                        per_head: bool = False, corrupt_edits: Sequence[Intervention] = (), batch_size: int = 32,
                        progress: Callable[[int], None] | None = None) -> PatchResult:
    """Patch each (point, position) - or with ``per_head`` each head of a per-head kind at every position -
    from the clean run into the corrupted one and record ``metric``. ``corrupt_edits`` are interventions that
    stay on during the corrupted runs (a corruption that is not a different prompt, e.g. noise at ``embed``)."""
    c, x = _inputs(model, clean, corrupt)
    pts = _points(model, kinds, layers)
    if per_head and any(p.kind not in HEAD_KINDS for p in pts):
        raise InputError(f"per-head patching needs per-head kinds ({', '.join(HEAD_KINDS)}); got "
                         f"{sorted({p.kind for p in pts} - set(HEAD_KINDS))}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    T = c.shape[1]
    clean_acts, clean_m = _clean_run(model, c, pts, metric)
    with torch.no_grad():
        corrupt_m = float(metric(_logits(model, x, corrupt_edits))[0])
    n_axis = clean_acts[pts[0].name].shape[2] if per_head else T
    jobs = [(p, j) for p in pts for j in range(clean_acts[p.name].shape[2] if per_head else T)]
    values = torch.empty(len(jobs))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        by_point: dict[HookPoint, list[tuple[int, int]]] = {}
        for r, (p, j) in enumerate(chunk):
            by_point.setdefault(p, []).append((r, j))
        hooks = [Hook(p, _patcher(clean_acts[p.name], rows, per_head),
                      label=f"activation patching: {'heads' if per_head else 'positions'} from the clean run")
                 for p, rows in by_point.items()]
        with torch.no_grad():
            vals = metric(_logits(model, x.expand(len(chunk), -1), [*corrupt_edits, *hooks]))
        values[start:start + len(chunk)] = vals.float().cpu()
        if progress is not None:
            progress(len(chunk))
    grids: dict[str, torch.Tensor] = {}
    kinds_seen = list(dict.fromkeys(p.kind for p in pts))
    layer_ids = sorted({p.layer for p in pts if p.layer is not None})
    for k in kinds_seen:
        g = torch.full((len(layer_ids), n_axis), float("nan"))
        for (p, j), v in zip(jobs, values.tolist(), strict=True):
            if p.kind == k:
                g[layer_ids.index(p.layer), j] = v
        grids[k] = g
    return PatchResult("activation", "head" if per_head else "position", layer_ids, _tokens(model, c),
                       clean_m, corrupt_m, grids)


def _patcher(clean: torch.Tensor, rows: list[tuple[int, int]], per_head: bool
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    def patch(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        src = clean.to(device=x.device, dtype=x.dtype)
        for r, j in rows:
            if per_head:
                out[r, :, j] = src[0, :, j]
            else:
                out[r, j] = src[0, j]
        return out

    return patch


def attribution_patching(model: Model, clean: str | torch.Tensor, corrupt: str | torch.Tensor, metric: Metric, *,
                         kinds: str | Iterable[str] = "resid_pre", layers: str | Iterable[int] | None = None,
                         per_head: bool = False, corrupt_edits: Sequence[Intervention] = ()) -> PatchResult:
    """The first-order estimate of :func:`activation_patching` for the same grid, from one clean forward (its
    activations), one corrupted forward and one backward: ``sum_d (clean - corrupt) * grad`` per position (per
    head: summed over positions too)."""
    c, x = _inputs(model, clean, corrupt)
    pts = _points(model, kinds, layers)
    if per_head and any(p.kind not in HEAD_KINDS for p in pts):
        raise InputError(f"per-head attribution needs per-head kinds ({', '.join(HEAD_KINDS)})")
    clean_acts, clean_m = _clean_run(model, c, pts, metric)
    with torch.enable_grad(), model.edit(*corrupt_edits), \
            model.capture(pts, positions="all", dtype=None, device=model.device, grad=True) as acts:
        m = metric(model(input_ids=x, use_cache=False).logits[:, -1, :].float())
        m.sum().backward()
    corrupt_m = float(m.detach()[0])
    layer_ids = sorted({p.layer for p in pts if p.layer is not None})
    grids: dict[str, torch.Tensor] = {}
    for k in dict.fromkeys(p.kind for p in pts):
        rows = []
        for layer in layer_ids:
            p = HookPoint(layer, k)
            if p.name not in acts:
                continue
            delta = (clean_acts[p.name] - acts[p.name]).double()
            est = (delta * acts.grads[p.name].double())[0]  # [T, ...]
            if per_head:
                rows.append(est.sum(dim=(0, *range(2, est.dim()))))  # [head]
            else:
                rows.append(est.reshape(est.shape[0], -1).sum(-1))  # [T]
        grids[k] = torch.stack(rows).float()
    model.hf.zero_grad(set_to_none=True)
    return PatchResult("attribution", "head" if per_head else "position", layer_ids, _tokens(model, c),
                       clean_m, corrupt_m, grids)


def _tokens(model: Model, ids: torch.Tensor) -> list[str]:
    if model.tokenizer is None:
        return [str(int(i)) for i in ids[0]]
    from .models.tokens import token_strings

    return token_strings(model.tokenizer, ids[0].tolist())
