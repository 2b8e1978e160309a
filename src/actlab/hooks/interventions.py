"""Interventions: descriptions of edits to a model's activations, applied through one write path.

An :class:`Intervention` is a small object (add a vector, project a direction out, replace an activation
by a function of itself...) that knows its hook points and turns into :class:`Edit` s when applied; it
does not touch the model until then. Any list of them applies together::

    with model.edit(Steer(vec, 4.0, layers="10-12"), ProjectOut(refusal), FeatureEdit(sae, point, ablate=[7])):
        model.generate_text(...)

:class:`Edits` (what ``model.edit`` returns) checks every intervention first (widths, layers, positions),
then installs every edit in one :class:`~actlab.hooks.core.HookSession`, so a bad one installs nothing.
Order is explicit: edits at one hook point run in the order the interventions are listed (then, within an
intervention, in the order it made them); edits at different points run in forward order. Nesting
``with`` blocks gives the same result as listing the interventions in one call, outer first.

Where the interventions live: this module holds the base classes, :class:`Replace` and :class:`Hook`;
:mod:`~actlab.hooks.additions` holds :class:`~actlab.hooks.additions.Add` (the one place a scaled direction is
added at positions: steering, mixing, sweeps of many cells at once); :mod:`~actlab.hooks.directions` holds the
edits along a direction (:class:`~actlab.hooks.directions.ProjectOut`, :class:`~actlab.hooks.directions.Rotate`).
Which tokens an edit applies to is :class:`~actlab.hooks.positions.Boundary`'s business.

Every intervention records itself (:meth:`Intervention.record`: kind, the full names of its hook points,
multiplier, source file and its sha256...) and every application is reported to the run folder being written
(:func:`actlab.runs.note_interventions`), so a run's ``run.json`` lists what was actually applied;
:func:`active_records` lists what is applied to a model right now.

Composite kinds (``resid_mid``) have no module of their own: an edit ``f`` of them is written through the
attention output ``a`` as ``f(resid_pre + a) - resid_pre``; an edit declared ``additive`` (``f(x) - x`` does
not depend on ``x``) is written to ``a`` directly.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .core import ForwardState, HookSession
from .points import HookPoint, parse_points
from .positions import Boundary, check_steer_positions, masked
from .sites import HookTarget, attach, write_plan

EditFn = Callable[[torch.Tensor, "ForwardState | None"], "torch.Tensor | None"]


@dataclass
class Edit:
    """Replace the activation ``x`` at ``point`` (``[batch, seq, width]``) by ``fn(x, state)`` at every forward."""

    point: HookPoint
    fn: EditFn
    additive: bool = False


def install_edit(session: HookSession, target: HookTarget, edit: Edit) -> None:
    """The one write path: add ``edit`` to ``session`` at its point's write site (see module docstring)."""
    plan = write_plan(target, edit.point)
    order = edit.point.order
    site = plan.site
    if plan.base is None or edit.additive:
        attach(session, site, edit.fn, write=True, order=order)
        return
    assert plan.base_site is not None
    held: dict[str, torch.Tensor] = {}
    fn, name = edit.fn, edit.point.name

    def keep_base(x: torch.Tensor, state: ForwardState | None) -> None:
        held["base"] = x

    def through_part(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
        base = held.pop("base", None)
        if base is None or base.shape != x.shape:
            raise RuntimeError(f"{name}: the block input was not seen before its attention output")
        new = fn(base + x, state)
        if new is None:  # a hook that only read the value
            return None
        wide = torch.promote_types(x.dtype, torch.float32)  # at least float32: half-precision sums lose the edit
        return (new.to(wide) - base.to(wide)).to(x.dtype)

    session.add(plan.base_site.module, plan.base_site.where, keep_base, write=False, order=order)
    attach(session, site, through_part, write=True, order=order)  # a scaled branch: seen as the stream gets it


class Intervention:
    """Base of every intervention (see module docstring). Subclasses implement :meth:`edits` and extend
    :meth:`record`; they keep no model state between applications."""

    kind: str = "intervention"

    def edits(self, target: HookTarget) -> list[Edit]:
        """Check the intervention against ``target`` and return its edits (nothing is installed here)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """JSON-ready description for run metadata: ``kind``, ``points`` (full hook-point names) and what else
        says what the edit does."""
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.record()})"


_ACTIVE: weakref.WeakKeyDictionary[Any, list[Edits]] = weakref.WeakKeyDictionary()


class Edits:
    """Interventions applied to a model: a context manager, or a handle (``remove()``) for long-lived use."""

    def __init__(self, target: HookTarget, interventions: Iterable[Intervention]):
        from ..runs import note_interventions

        self.target = target
        self.interventions = list(interventions)
        for iv in self.interventions:
            if not isinstance(iv, Intervention):
                raise InputError(f"model.edit() takes interventions (Steer, ProjectOut, FeatureEdit, Replace...), "
                                 f"not {type(iv).__name__}")
        built = [iv.edits(target) for iv in self.interventions]  # validate everything before installing
        session = HookSession(target.base, getattr(target, "hf", None))
        try:
            for edits in built:
                for e in edits:
                    install_edit(session, target, e)
        except BaseException:
            session.close()
            raise
        self.session: HookSession | None = session
        _ACTIVE.setdefault(target.base, []).append(self)
        note_interventions([iv.record() for iv in self.interventions])

    def records(self) -> list[dict[str, Any]]:
        """What these interventions do, in application order (for run metadata)."""
        return [{"order": k, **iv.record()} for k, iv in enumerate(self.interventions)]

    def remove(self) -> None:
        """Remove every hook these interventions installed (idempotent)."""
        if self.session is not None:
            self.session.close()
            self.session = None
            active = _ACTIVE.get(self.target.base)
            if active is not None and self in active:
                active.remove(self)

    def __enter__(self) -> Edits:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def active_records(target: HookTarget) -> list[dict[str, Any]]:
    """Records of every intervention applied to ``target`` right now, outermost first."""
    out: list[dict[str, Any]] = []
    for ed in _ACTIVE.get(target.base, []):
        out += [iv.record() for iv in ed.interventions]
    return out


# -- helpers every intervention shares --------------------------------------------------------------------
class CastCache:
    """A tensor on the device and dtype of the activations it meets, converted once per (device, dtype)."""

    def __init__(self, value: torch.Tensor):
        self.value = value
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = self.value.to(device=x.device, dtype=x.dtype)
        return v


def finite(x: Any, what: str) -> float:
    """``x`` as a finite float, or a one-line error naming ``what``."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {x!r}") from None
    if not math.isfinite(f):
        raise InputError(f"{what} must be finite, got {x!r}")
    return f


def unit(direction: torch.Tensor) -> torch.Tensor:
    """``direction`` (``[d]``, or ``[rows, d]``: one per row) as a float64 unit vector; zero or non-finite is an
    error. Kept in float64 so an fp64 model ablates in fp64; every edit casts it to the activation's dtype."""
    d = direction.detach().double()
    d = d.reshape(-1) if d.dim() < 2 else d
    n = d.norm(dim=-1, keepdim=True)
    if bool((n == 0).any()) or not bool(torch.isfinite(n).all()):
        raise InputError("cannot use a zero or non-finite direction")
    return d / n


def point_names(points: Iterable[HookPoint | str]) -> list[str]:
    """Hook-point names for run records, in the point grammar: one name per point, or - for a kind at a run of
    evenly spaced layers - one range (``blocks.0-29.resid_pre``, ``blocks.4-12:4.attn_out``), so an ablation of
    every layer is three names, not ninety. ``parse_points`` reads every entry back."""
    out: list[str] = []
    runs: dict[str, list[int]] = {}
    order: list[str] = []
    for p in points:
        if isinstance(p, HookPoint) and p.layer is not None:
            if p.kind not in runs:
                runs[p.kind] = []
                order.append(p.kind)
            runs[p.kind].append(p.layer)
        else:
            name = p.name if isinstance(p, HookPoint) else str(p)
            if name not in out:
                out.append(name)
    for kind in order:
        layers = sorted(set(runs[kind]))
        i = 0
        while i < len(layers):
            j = i + 1
            step = layers[j] - layers[i] if j < len(layers) else 1
            while j < len(layers) and layers[j] - layers[j - 1] == step:
                j += 1
            if j - i >= 3:
                out.append(f"blocks.{layers[i]}-{layers[j - 1]}{'' if step == 1 else f':{step}'}.{kind}")
                i = j
            else:
                out.append(f"blocks.{layers[i]}.{kind}")
                i += 1
    return out


def as_point(target: HookTarget, p: HookPoint | str) -> HookPoint:
    """One hook point of ``target`` (a spec naming several is an error)."""
    pts = parse_points(p, target.n_layers)
    if len(pts) != 1:
        raise InputError(f"{p!r} names {len(pts)} hook points; this edit goes to one point")
    return pts[0]


# -- replacing an activation -----------------------------------------------------------------------------
class Replace(Intervention):
    """Replace the activation at one hook point by ``fn(x)`` (``[batch, seq, width]`` in, same shape out), e.g.
    an SAE reconstruction or zeros. ``label`` names the function in run metadata."""

    kind = "replace"

    def __init__(self, point: HookPoint | str, fn: Callable[[torch.Tensor], torch.Tensor], *, label: str = "",
                 source: dict[str, Any] | None = None):
        self.point, self.fn = point, fn
        self.label = label or getattr(fn, "__name__", type(fn).__name__)
        self.source = dict(source or {})

    def edits(self, target: HookTarget) -> list[Edit]:
        p = as_point(target, self.point)
        self.point = p
        fn = self.fn
        return [Edit(p, lambda x, state: fn(x))]

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "points": point_names([self.point]), "function": self.label, **self.source}


@dataclass(frozen=True)
class HookCall:
    """What a user hook is told besides the value: the point's name, layer and kind, and the forward state
    (attention mask, KV-cache length; None outside a model forward)."""

    name: str
    layer: int | None
    kind: str
    state: ForwardState | None


class Hook(Intervention):
    """Run your own function at hook points: ``fn(x)`` or ``fn(x, call)`` (a :class:`HookCall`) returns None to
    only read ``x`` or a tensor of the same shape to replace it. ``point`` may name several points
    (``"blocks.2-4.attn.pattern"``). ``positions`` limits a replacement to some tokens, as for steering
    (:data:`~actlab.hooks.positions.STEER_POSITIONS`); the function always sees the whole tensor. Runs through
    the same dispatcher and ordering as every built-in intervention (see the module docstring)."""

    kind = "hook"

    def __init__(self, point: HookPoint | str, fn: Callable[..., torch.Tensor | None], *, positions: str = "all",
                 eoi_ids: Sequence[int] | None = None, label: str = ""):
        if not callable(fn):
            raise InputError(f"the hook for {point} must be a function, not {type(fn).__name__}")
        self.point, self.fn = point, fn
        self.positions = check_steer_positions(positions)
        self.eoi_ids = list(eoi_ids) if eoi_ids is not None else None
        self.label = label or getattr(fn, "__name__", type(fn).__name__)
        self._two = _arity(fn) >= 2
        self._points: list[HookPoint] | None = None

    def edits(self, target: HookTarget) -> list[Edit]:
        pts = [self.point] if isinstance(self.point, HookPoint) else parse_points(self.point, target.n_layers)
        boundary = Boundary(self.positions, self.eoi_ids)
        self._points = list(pts)
        return [Edit(p, self._wrapped(p, boundary)) for p in pts]

    def _wrapped(self, p: HookPoint, boundary: Boundary) -> EditFn:
        fn, two, name = self.fn, self._two, p.name

        def run(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
            out = fn(x, HookCall(name, p.layer, p.kind, state)) if two else fn(x)
            if out is None:
                return None
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the hook at {name} returned {got}; return None or a tensor shaped like its "
                                 f"input {tuple(x.shape)}")
            if boundary.everywhere or state is None:
                return out
            return masked(x, out, boundary.mask(state))

        return run

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "points": point_names(self._points or [self.point]), "function": self.label,
                "positions": self.positions}


def _arity(fn: Callable[..., Any]) -> int:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(q.kind == q.VAR_POSITIONAL for q in params):
        return 2
    return sum(1 for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD) and q.default is q.empty)
