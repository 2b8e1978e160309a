"""Edits along a direction: project it out (directional ablation) or rotate towards / away from it.

Both take one unit direction ``[d]`` or one per row ``[rows, d]`` (a cells axis, as for
:class:`~actlab.hooks.additions.Add`), and :class:`Rotate` one angle or one per row. Directions are kept in
float64 (an fp64 model is edited in fp64) and cast once per device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import InputError
from .core import ForwardState
from .interventions import CastCache, Edit, EditFn, Intervention, finite, point_names, unit
from .points import ABLATION_KINDS, RESIDUAL_KINDS, HookPoint, layer_list
from .positions import DEFAULT_STEER_POSITIONS, Boundary, check_steer_positions, masked
from .sites import HookTarget


def _check_rows(x: torch.Tensor, rows: int | None, what: str) -> None:
    if rows is not None and x.shape[0] != rows:
        raise InputError(f"the {what} has one direction per row for {rows} rows, but the forward has {x.shape[0]}")


def _layers_spec(layers: str | int | Iterable[int] | None) -> Any:
    return layers if layers is None or isinstance(layers, (str, int)) else list(layers)


class ProjectOut(Intervention):
    """Directional ablation: ``x <- x - (x . r) r`` (``r`` unit-norm) at every position of ``kinds`` at
    ``layers`` (default: every block input and every attention and MLP output, i.e. nothing can write ``r``
    into the residual stream; Arditi et al. 2024). ``direction`` may be ``[rows, d]``: one per row."""

    kind = "project_out"

    def __init__(self, direction: torch.Tensor, *, layers: str | int | Iterable[int] | None = None,
                 kinds: Iterable[str] = ABLATION_KINDS, source: Mapping[str, Any] | None = None):
        self.r = unit(direction)
        self.layers_spec = _layers_spec(layers)
        if isinstance(self.layers_spec, list) and not self.layers_spec:
            raise InputError("the layer list is empty; give at least one layer to ablate")
        self.kinds = tuple(kinds)
        bad = [k for k in self.kinds if k not in RESIDUAL_KINDS]
        if bad:
            raise InputError(f"cannot project a residual direction out of {bad}; valid kinds: "
                             f"{', '.join(RESIDUAL_KINDS)}")
        self.source = dict(source or {})
        self._layers: list[int] | None = None

    def edits(self, target: HookTarget) -> list[Edit]:
        if self.r.shape[-1] != target.d_model:
            raise InputError(f"direction has {self.r.shape[-1]} entries; the model's d_model is {target.d_model}")
        self._layers = layer_list(self.layers_spec, target.n_layers)
        return [Edit(HookPoint(i, k), _projector(self.r)) for i in self._layers for k in self.kinds]

    def record(self) -> dict[str, Any]:
        layers = self._layers if self._layers is not None else self.layers_spec
        pts = (point_names(HookPoint(i, k) for i in self._layers for k in self.kinds) if self._layers is not None
               else [f"blocks.{'all' if layers is None else layers}.{k}" for k in self.kinds])
        out = {"kind": self.kind, "points": pts, "layers": "all" if layers is None else layers}
        if self.r.dim() == 2:
            out["rows"] = int(self.r.shape[0])
        return {**out, **self.source}


def _projector(r0: torch.Tensor) -> EditFn:
    rows = r0.shape[0] if r0.dim() == 2 else None
    cast = CastCache(r0[:, None, :] if rows is not None else r0)

    def project_out(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
        _check_rows(x, rows, "ablation")
        r = cast.like(x)
        return x - (x * r).sum(-1, keepdim=True) * r

    return project_out


def _angle(angle: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(angle, dtype=like.dtype, device=like.device)
    return a.view(-1, *([1] * (like.dim() - 1))) if a.dim() == 1 else a


def rotate_towards(x: torch.Tensor, d: torch.Tensor, angle: float | torch.Tensor) -> torch.Tensor:
    """Rotate each vector of ``x`` (``[..., width]``) by ``angle`` radians (one, or one per row of ``x``) in the
    plane it spans with the unit direction ``d`` (``[width]`` or ``[rows, 1, width]``), towards ``d`` (negative:
    away from it), keeping its norm. A vector parallel to ``d`` has no such plane and is left alone."""
    xf = x.double()
    dd = d.to(xf.device).double()
    n = xf.norm(dim=-1, keepdim=True)
    u = xf / n.clamp_min(1e-30)
    w = dd - (u * dd).sum(-1, keepdim=True) * u  # the part of d orthogonal to x
    wn = w.norm(dim=-1, keepdim=True)
    ok = wn > 1e-9
    w_hat = torch.where(ok, w / wn.clamp_min(1e-30), torch.zeros_like(w))
    a = _angle(angle, xf)
    out = n * (torch.cos(a) * u + torch.sin(a) * w_hat)
    return torch.where(ok, out, xf).to(x.dtype)


def set_angle(x: torch.Tensor, d: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
    """Angular steering: put each vector of ``x`` at ``target`` radians (one, or one per row) from the unit
    direction ``d``, in the plane it spans with ``d``, keeping its norm (``target=0``: along ``d``; ``pi/2``:
    orthogonal to it)."""
    xf = x.double()
    dd = d.to(xf.device).double()
    n = xf.norm(dim=-1, keepdim=True)
    e = xf - (xf * dd).sum(-1, keepdim=True) * dd  # x's component orthogonal to d
    en = e.norm(dim=-1, keepdim=True)
    e_hat = torch.where(en > 1e-9, e / en.clamp_min(1e-30), torch.zeros_like(e))
    t = _angle(target, xf)
    return (n * (torch.cos(t) * dd + torch.sin(t) * e_hat)).to(x.dtype)


class Rotate(Intervention):
    """Norm-preserving steering at ``kind`` of ``layers`` (default every layer): rotate each activation by
    ``angle`` degrees towards ``direction`` in the plane of the two (``mode='by'``), or set its angle to
    ``direction`` to ``angle`` degrees (``mode='to'``, angular steering). Unlike addition, the activation's norm
    never changes - the hypothesis that prompting rotates the residual stream is tested with it. ``angle`` may be
    a sequence (one per row of the batch: an angle sweep in one forward)."""

    kind = "rotate"

    def __init__(self, direction: torch.Tensor, angle: float | Sequence[float], *, mode: str = "by",
                 layers: str | int | Iterable[int] | None = None, kind: str = "resid_post",
                 positions: str = DEFAULT_STEER_POSITIONS, eoi_ids: Sequence[int] | None = None,
                 starts: Sequence[int] | torch.Tensor | None = None, source: Mapping[str, Any] | None = None):
        if mode not in ("by", "to"):
            raise InputError(f"rotation mode must be 'by' (rotate by an angle) or 'to' (set the angle), not {mode!r}")
        many = not isinstance(angle, (int, float))
        self.angle_deg: float | list[float] = ([finite(a, "angle") for a in angle] if many  # type: ignore[union-attr]
                                               else finite(angle, "angle"))
        degrees = self.angle_deg if isinstance(self.angle_deg, list) else [self.angle_deg]
        if many and not degrees:
            raise InputError("the per-row angle list is empty")
        if mode == "to" and not all(0 <= a <= 180 for a in degrees):
            raise InputError(f"a target angle must be within 0..180 degrees, got {angle}")
        self.r, self.mode, self.kind_name = unit(direction), mode, kind
        self.radians = ([math.radians(a) for a in degrees] if many else math.radians(degrees[0]))
        self.layers_spec = _layers_spec(layers)
        self.positions = check_steer_positions(positions) if starts is None else "starts"
        self.eoi_ids = list(eoi_ids) if eoi_ids is not None else None
        self.starts = starts
        self.source = dict(source or {})
        self._layers: list[int] | None = None

    def edits(self, target: HookTarget) -> list[Edit]:
        if self.kind_name not in RESIDUAL_KINDS:
            raise InputError(f"rotations act in the residual basis; {self.kind_name!r} is not one of "
                             f"{', '.join(RESIDUAL_KINDS)}")
        if self.r.shape[-1] != target.d_model:
            raise InputError(f"direction has {self.r.shape[-1]} entries; the model's d_model is {target.d_model}")
        self._layers = layer_list(self.layers_spec, target.n_layers)
        boundary = Boundary(self.positions if self.starts is None else "all", self.eoi_ids, starts=self.starts)
        rows = len(self.radians) if isinstance(self.radians, list) else (
            self.r.shape[0] if self.r.dim() == 2 else None)
        r = self.r[:, None, :] if self.r.dim() == 2 else self.r
        rad = torch.tensor(self.radians, dtype=torch.float64) if isinstance(self.radians, list) else self.radians
        turn = rotate_towards if self.mode == "by" else set_angle

        def rotate(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
            _check_rows(x, rows, "rotation")
            new = turn(x, r, rad)
            if state is None or (boundary.everywhere and not state.padded):
                return new
            return masked(x, new, boundary.mask(state))

        return [Edit(HookPoint(i, self.kind_name), rotate) for i in self._layers]

    def record(self) -> dict[str, Any]:
        layers = self._layers if self._layers is not None else self.layers_spec
        pts = (point_names(HookPoint(i, self.kind_name) for i in self._layers) if self._layers is not None
               else [f"blocks.{'all' if layers is None else layers}.{self.kind_name}"])
        return {"kind": self.kind, "points": pts, "mode": self.mode, "angle_degrees": self.angle_deg,
                "layers": "all" if layers is None else layers, "positions": self.positions, **self.source}
