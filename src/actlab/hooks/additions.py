"""Adding a scaled direction to activations: the one place actlab does steering arithmetic.

:class:`Add` adds ``multiplier * vector`` at hook points, at the tokens its position policy selects
(:class:`~actlab.hooks.positions.Boundary`). Everything that steers builds one: ``Steer`` and ``Mix``
(:mod:`actlab.steering.apply`) are subclasses, and the engines that evaluate many settings at once (the A/B sweep,
refusal candidate scores, shared-prefix generation, :mod:`actlab.steering.prefix`) build an ``Add`` with a
*cells axis*: a vector of shape ``[rows, width]`` (or a multiplier per row) gives every row of the batch its
own addition, so several settings share one forward.

A vector that requires grad keeps its graph (derivatives along a direction, :mod:`actlab.analysis.curvature`);
otherwise it is detached and kept on the CPU at its own precision, summed per point in float64, and cast once
per device and dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import InputError
from .core import ForwardState
from .interventions import CastCache, Edit, EditFn, Intervention, as_point, finite, point_names
from .points import HookPoint
from .positions import DEFAULT_STEER_POSITIONS, Boundary, check_steer_positions
from .sites import HookTarget


def _kept(v: torch.Tensor) -> torch.Tensor:
    if v.requires_grad:
        return v.reshape(-1) if v.dim() < 2 else v
    v = v.detach().cpu()
    return v.reshape(-1) if v.dim() < 2 else v


class Add(Intervention):
    """Add ``multiplier * vector`` at hook points, at the tokens ``positions`` selects: ``all`` (every real token,
    prompt included), ``from_eoi`` (from the end-of-instruction tokens on), ``generated`` (tokens after the
    prompt), ``auto`` (``from_eoi`` in rows that have end-of-instruction tokens, ``all`` in the others),
    ``last:K`` (from the prompt's K-th last token on); or explicit per-row ``starts`` (absolute positions).

    The cells axis: a vector ``[rows, width]`` or a sequence of multipliers gives each row of the batch its own
    addition (``cells`` then describes the distinct settings for the run record). Vectors at one point are
    summed (float64) into one delta."""

    kind = "add"

    def __init__(self, vectors: Mapping[HookPoint | str, torch.Tensor], multiplier: float | Sequence[float] = 1.0,
                 *, positions: str = DEFAULT_STEER_POSITIONS, eoi_ids: Sequence[int] | None = None,
                 starts: Sequence[int] | torch.Tensor | None = None,
                 cells: Sequence[Mapping[str, Any]] | None = None, source: Mapping[str, Any] | None = None):
        if not vectors:
            raise InputError("nothing to add: no hook point or vector given")
        self.vectors = {k: _kept(v) for k, v in vectors.items()}
        if isinstance(multiplier, (int, float)) or (isinstance(multiplier, torch.Tensor) and multiplier.dim() == 0):
            self.multiplier: float | list[float] = finite(multiplier, "multiplier")
        else:
            self.multiplier = [finite(m, "multiplier") for m in multiplier]
            if not self.multiplier:
                raise InputError("the per-row multiplier list is empty")
        self.positions = check_steer_positions(positions) if starts is None else "starts"
        self.eoi_ids = list(eoi_ids) if eoi_ids is not None else None
        self.starts = starts
        self.cells = [dict(c) for c in cells] if cells is not None else None
        self.source = dict(source or {})
        self._points: list[HookPoint] | None = None

    def _resolved(self, target: HookTarget) -> list[tuple[HookPoint, torch.Tensor]]:
        """(point, vector) pairs; subclasses choose which (Steer: the vector's layers)."""
        return [(as_point(target, p), v) for p, v in self.vectors.items()]

    def edits(self, target: HookTarget) -> list[Edit]:
        boundary = Boundary(self.positions if self.starts is None else "all", self.eoi_ids, starts=self.starts)
        scale = (torch.tensor(self.multiplier, dtype=torch.float64)[:, None] if isinstance(self.multiplier, list)
                 else self.multiplier)
        rows = len(self.multiplier) if isinstance(self.multiplier, list) else None
        deltas: dict[HookPoint, torch.Tensor] = {}
        for p, v in self._resolved(target):
            width = p.width(target)
            if v.dim() > 2 or v.shape[-1] != width:
                raise InputError(f"vector for {p.name} has shape {tuple(v.shape)}, expected ({width},) or "
                                 f"(rows, {width})")
            if v.dim() == 2:
                if rows is not None and v.shape[0] != rows:
                    raise InputError(f"the additions have {v.shape[0]} rows at {p.name} but {rows} elsewhere")
                rows = v.shape[0]
            if not bool(torch.isfinite(v.detach()).all()):
                raise InputError(f"vector for {p.name} contains NaN or infinite values")
            d = scale * v.double()
            deltas[p] = deltas[p] + d if p in deltas else d
        _check_range(deltas, getattr(target, "dtype", torch.float32), self.multiplier)
        self._points = list(deltas)
        return [Edit(p, _adder(d, boundary), additive=True) for p, d in deltas.items()]

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "points": point_names(self._points or self.vectors),
                               "positions": self.positions}
        if self.cells is not None:
            out["cells"] = self.cells
        else:
            out["multiplier"] = self.multiplier
            if all(v.dim() == 1 for v in self.vectors.values()):
                out["norms"] = [round(float(v.detach().norm()), 6) for v in self.vectors.values()]
        return {**out, **self.source}


def _check_range(deltas: Mapping[HookPoint, torch.Tensor], dtype: torch.dtype, multiplier: Any) -> None:
    """Refuse an addition the activations' dtype cannot hold (``-m 1e308``, a vector of 3e38 times 4): it would
    turn every activation into infinity or NaN and the generations into garbage, silently."""
    if not dtype.is_floating_point:
        return
    top = torch.finfo(dtype).max
    for p, d in deltas.items():
        big = float(d.detach().abs().max()) if d.numel() else 0.0
        if not big < top:
            raise InputError(f"the addition at {p.name} reaches {big:.3g} (multiplier {multiplier!r} times the "
                             f"vector), beyond what {str(dtype).replace('torch.', '')} holds ({top:.3g}); use a "
                             "smaller multiplier or a normalised vector")


def _adder(delta: torch.Tensor, boundary: Boundary) -> EditFn:
    """``x + delta`` at the boundary's tokens; ``delta`` is ``[width]`` or ``[rows, width]`` (one per row)."""
    rows = delta.shape[0] if delta.dim() == 2 else None
    cast = CastCache(delta[:, None, :] if rows is not None else delta)

    def add(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
        if rows is not None and x.shape[0] != rows:
            raise InputError(f"the addition has one delta per row for {rows} rows, but the forward has "
                             f"{x.shape[0]}")
        d = cast.like(x)
        if state is None or (boundary.everywhere and not state.padded):
            return x + d
        m = boundary.mask(state).to(x.device)
        return x + m[..., None].to(x.dtype) * d

    return add
