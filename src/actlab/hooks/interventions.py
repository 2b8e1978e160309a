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

Every intervention records itself (:meth:`Intervention.record`: kind, points, layers, multiplier, source
file and its sha256...) so a run folder can say exactly what was done to the model; :func:`active_records`
lists what is applied to a model right now.

Composite kinds (``resid_mid``) have no module of their own: an edit ``f`` of them is written through the
attention output ``a`` as ``f(resid_pre + a) - resid_pre``; an edit declared ``additive`` (``f(x) - x`` does
not depend on ``x``) is written to ``a`` directly.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from .core import ForwardState, HookSession
from .points import ABLATION_KINDS, RESIDUAL_KINDS, HookPoint, layer_list, parse_points
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
    session.add(site.module, site.where, through_part, write=True, order=order)


class Intervention:
    """Base of every intervention (see module docstring). Subclasses implement :meth:`edits` and extend
    :meth:`record`; they keep no model state between applications."""

    kind: str = "intervention"

    def edits(self, target: HookTarget) -> list[Edit]:
        """Check the intervention against ``target`` and return its edits (nothing is installed here)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """JSON-ready description for run metadata."""
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.record()})"


_ACTIVE: weakref.WeakKeyDictionary[Any, list[Edits]] = weakref.WeakKeyDictionary()


class Edits:
    """Interventions applied to a model: a context manager, or a handle (``remove()``) for long-lived use."""

    def __init__(self, target: HookTarget, interventions: Iterable[Intervention]):
        self.target = target
        self.interventions = list(interventions)
        for iv in self.interventions:
            if not isinstance(iv, Intervention):
                raise InputError(f"model.edit() takes interventions (Steer, ProjectOut, FeatureEdit, Replace...), "
                                 f"not {type(iv).__name__}")
        built = [iv.edits(target) for iv in self.interventions]  # validate everything before installing
        session = HookSession(target.base)
        try:
            for edits in built:
                for e in edits:
                    install_edit(session, target, e)
        except BaseException:
            session.close()
            raise
        self.session: HookSession | None = session
        _ACTIVE.setdefault(target.base, []).append(self)

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


# -- position policies for additions ---------------------------------------------------------------------
STEER_POSITIONS = ("auto", "all", "from_eoi", "generated")
DEFAULT_STEER_POSITIONS = "auto"


def check_steer_positions(positions: str) -> str:
    if positions not in STEER_POSITIONS:
        raise InputError(f"unknown steering position policy {positions!r}; valid: {', '.join(STEER_POSITIONS)} "
                         "(auto: from the end-of-instruction tokens on where a row has them, else every token; "
                         "all: every real token; from_eoi: from the end-of-instruction tokens on; generated: "
                         "only generated tokens)")
    return positions


def eoi_start(ids: torch.Tensor, eoi_ids: Sequence[int], *, missing: int | None = None) -> torch.Tensor:
    """Per row of ``ids`` ``[batch, seq]``, the index of the first token of the *last* occurrence of the
    end-of-instruction sequence ``eoi_ids`` - the one boundary that reading (``eoi``) and steering
    (``from_eoi``) positions both refer to. A row without it is an error naming the row, or gets ``missing``."""
    k = len(eoi_ids)
    if k == 0:
        raise InputError("the end-of-instruction token sequence is empty")
    pattern = torch.tensor(list(eoi_ids), device=ids.device)
    windows = ids.unfold(1, k, 1) if ids.shape[1] >= k else ids.new_empty(ids.shape[0], 0, k)
    hit = (windows == pattern).all(-1)  # [B, T-k+1]
    found = hit.any(1)
    if missing is None and not bool(found.all()):
        row = int((~found).nonzero()[0])
        raise InputError(f"row {row} does not contain the chat template's end-of-instruction tokens; build "
                         "prompts with the chat template or steer positions='all'")
    if hit.shape[1] == 0:  # every row is shorter than the sequence (and missing is allowed)
        return torch.full((ids.shape[0],), missing or 0, dtype=torch.long, device=ids.device)
    start = hit.shape[1] - 1 - torch.argmax(torch.flip(hit, dims=[1]).to(torch.int8), dim=1)
    return torch.where(found, start, torch.full_like(start, missing or 0))


class _Thresholds:
    """Per-row absolute start positions for 'generated' / 'from_eoi', refreshed at each new prompt.

    A forward with an empty KV cache is a new prompt unless it extends the previous prompt's ids (as in
    generation with ``use_cache=False``, where every step re-reads the whole sequence)."""

    def __init__(self, policy: str, eoi_ids: Sequence[int] | None):
        self.policy, self.eoi_ids = policy, list(eoi_ids) if eoi_ids is not None else None
        self.start: torch.Tensor | None = None
        self.prompt: torch.Tensor | None = None

    def _continues(self, state: ForwardState) -> bool:
        p, ids = self.prompt, state.input_ids
        return (p is not None and ids is not None and ids.shape[0] == p.shape[0] and ids.shape[1] > p.shape[1]
                and bool((ids[:, :p.shape[1]] == p.to(ids.device)).all()))

    def update(self, state: ForwardState) -> None:
        if state.past_len != 0 or self._continues(state):
            if self.start is None:
                raise InputError(f"positions={self.policy!r} needs to see the prompt: enter the steering context "
                                 "before the first forward pass of a generation")
            return
        self.prompt = state.input_ids
        if self.policy == "generated":
            self.start = torch.full((state.batch,), state.seq, dtype=torch.long, device=state.mask.device)
            return
        if self.policy == "auto":  # rows with an end of instruction steer from it, the others everywhere
            if state.input_ids is None or not self.eoi_ids:
                self.start = torch.zeros(state.batch, dtype=torch.long, device=state.mask.device)
            else:
                self.start = eoi_start(state.input_ids, self.eoi_ids, missing=0).to(state.mask.device)
            return
        if state.input_ids is None or not self.eoi_ids:
            raise InputError("positions='from_eoi' needs token ids and a chat template")
        self.start = eoi_start(state.input_ids, self.eoi_ids).to(state.mask.device)

    def mask(self, state: ForwardState) -> torch.Tensor:
        assert self.start is not None
        pos = state.past_len + torch.arange(state.seq, device=state.mask.device)
        return (pos[None, :] >= self.start[:, None]) & state.mask


def _as_point(target: HookTarget, p: HookPoint | str) -> HookPoint:
    pts = parse_points(p, target.n_layers)
    if len(pts) != 1:
        raise InputError(f"{p!r} names {len(pts)} hook points; an addition goes to one point")
    return pts[0]


class Add(Intervention):
    """Add ``multiplier * vector`` at hook points (steering, mixing), at the tokens ``positions`` selects:
    ``all`` (every real token, prompt included), ``from_eoi`` (from the end-of-instruction tokens on),
    ``generated`` (tokens after the prompt), ``auto`` (``from_eoi`` in rows that have end-of-instruction tokens,
    ``all`` in the others). Vectors at one site are summed (float64) into one delta."""

    kind = "add"

    def __init__(self, vectors: Mapping[HookPoint | str, torch.Tensor], multiplier: float = 1.0, *,
                 positions: str = DEFAULT_STEER_POSITIONS, eoi_ids: Sequence[int] | None = None,
                 source: Mapping[str, Any] | None = None):
        if not vectors:
            raise InputError("nothing to add: no hook point or vector given")
        self.vectors = {k: v.detach().reshape(-1).cpu() for k, v in vectors.items()}  # kept at their precision
        self.multiplier = _finite(multiplier, "multiplier")
        self.positions = check_steer_positions(positions)
        self.eoi_ids = list(eoi_ids) if eoi_ids is not None else None
        self.source = dict(source or {})

    def _resolved(self, target: HookTarget) -> list[tuple[HookPoint, torch.Tensor, float]]:
        """(point, vector, multiplier) triples; subclasses may supply per-point multipliers."""
        return [(_as_point(target, p), v, self.multiplier) for p, v in self.vectors.items()]

    def edits(self, target: HookTarget) -> list[Edit]:
        if self.positions == "from_eoi" and not self.eoi_ids:
            raise InputError("positions='from_eoi' needs the end-of-instruction token ids (a chat template)")
        deltas: dict[HookPoint, torch.Tensor] = {}
        for p, v, m in self._resolved(target):
            width = p.width(target)
            if v.shape != (width,):
                raise InputError(f"vector for {p.name} has shape {tuple(v.shape)}, expected ({width},)")
            if not bool(torch.isfinite(v).all()):
                raise InputError(f"vector for {p.name} contains NaN or infinite values")
            d = m * v.double()
            deltas[p] = deltas[p] + d if p in deltas else d
        thresholds = _Thresholds(self.positions, self.eoi_ids) if self.positions != "all" else None
        return [Edit(p, _adder(d, thresholds), additive=True) for p, d in deltas.items()]  # float64 until used

    def record(self) -> dict[str, Any]:
        pts = [p.name if isinstance(p, HookPoint) else str(p) for p in self.vectors]
        return {"kind": self.kind, "points": pts, "multiplier": self.multiplier, "positions": self.positions,
                "norms": [round(float(v.norm()), 6) for v in self.vectors.values()], **self.source}


def _finite(x: float, what: str) -> float:
    try:
        f = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {x!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise InputError(f"{what} must be finite, got {x!r}")
    return f


def _adder(delta: torch.Tensor, thresholds: _Thresholds | None) -> EditFn:
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def add(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
        key = (x.device, x.dtype)
        d = cache.get(key)
        if d is None:
            d = cache[key] = delta.to(device=x.device, dtype=x.dtype)
        if state is None:
            return x + d
        if thresholds is None:
            if not state.padded:
                return x + d
            return x + state.mask.to(x.device)[..., None].to(x.dtype) * d
        key2 = ("steer_mask", id(thresholds))
        if key2 not in state.cache:  # the first handler of this forward computes it
            thresholds.update(state)
            state.cache[key2] = thresholds.mask(state)
        m = state.cache[key2].to(x.device)
        return x + m[..., None].to(x.dtype) * d

    return add


def unit(direction: torch.Tensor) -> torch.Tensor:
    """``direction`` as a float32 unit vector (normalised in float64); zero or non-finite is an error."""
    d = direction.detach().double().reshape(-1)
    n = d.norm()
    if n == 0 or not torch.isfinite(n):
        raise InputError("cannot use a zero or non-finite direction")
    return (d / n).float()




class ProjectOut(Intervention):
    """Directional ablation: ``x <- x - (x . r) r`` (``r`` unit-norm) at every position of ``kinds`` at
    ``layers`` (default: every block input and every attention and MLP output, i.e. nothing can write ``r``
    into the residual stream; Arditi et al. 2024)."""

    kind = "project_out"

    def __init__(self, direction: torch.Tensor, *, layers: str | int | Iterable[int] | None = None,
                 kinds: Iterable[str] = ABLATION_KINDS, source: Mapping[str, Any] | None = None):
        self.r = unit(direction)
        self.layers_spec = layers if layers is None or isinstance(layers, (str, int)) else list(layers)
        self.kinds = tuple(kinds)
        bad = [k for k in self.kinds if k not in RESIDUAL_KINDS]
        if bad:
            raise InputError(f"cannot project a residual direction out of {bad}; valid kinds: "
                             f"{', '.join(RESIDUAL_KINDS)}")
        self.source = dict(source or {})
        self._layers: list[int] | None = None

    def edits(self, target: HookTarget) -> list[Edit]:
        if self.r.numel() != target.d_model:
            raise InputError(f"direction has {self.r.numel()} entries; the model's d_model is {target.d_model}")
        self._layers = layer_list(self.layers_spec, target.n_layers)
        return [Edit(HookPoint(i, k), _projector(self.r)) for i in self._layers for k in self.kinds]

    def record(self) -> dict[str, Any]:
        layers = self._layers if self._layers is not None else self.layers_spec
        return {"kind": self.kind, "layers": "all" if layers is None else layers, "kinds": list(self.kinds),
                **self.source}


def _projector(r0: torch.Tensor) -> EditFn:
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def project_out(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
        key = (x.device, x.dtype)
        r = cache.get(key)
        if r is None:
            r = cache[key] = r0.to(device=x.device, dtype=x.dtype)
        return x - (x @ r)[..., None] * r

    return project_out


class Replace(Intervention):
    """Replace the activation at one hook point by ``fn(x)`` (``[batch, seq, width]`` in, same shape out), e.g.
    an SAE reconstruction or zeros. ``label`` names the function in run metadata."""

    kind = "replace"

    def __init__(self, point: HookPoint | str, fn: Callable[[torch.Tensor], torch.Tensor], *, label: str = "",
                 source: Mapping[str, Any] | None = None):
        self.point, self.fn = point, fn
        self.label = label or getattr(fn, "__name__", type(fn).__name__)
        self.source = dict(source or {})

    def edits(self, target: HookTarget) -> list[Edit]:
        p = _as_point(target, self.point)
        self.point = p
        fn = self.fn
        return [Edit(p, lambda x, state: fn(x))]

    def record(self) -> dict[str, Any]:
        name = self.point.name if isinstance(self.point, HookPoint) else str(self.point)
        return {"kind": self.kind, "points": [name], "function": self.label, **self.source}


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
    (``all``, ``from_eoi``, ``generated``, ``auto``); the function always sees the whole tensor. Runs through
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

    def edits(self, target: HookTarget) -> list[Edit]:
        pts = [self.point] if isinstance(self.point, HookPoint) else parse_points(self.point, target.n_layers)
        if self.positions == "from_eoi" and not self.eoi_ids:
            raise InputError("positions='from_eoi' needs the end-of-instruction token ids (a chat template)")
        thresholds = _Thresholds(self.positions, self.eoi_ids) if self.positions != "all" else None
        return [Edit(p, self._wrapped(p, thresholds)) for p in pts]

    def _wrapped(self, p: HookPoint, thresholds: _Thresholds | None) -> EditFn:
        fn, two, name = self.fn, self._two, p.name

        def run(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
            out = fn(x, HookCall(name, p.layer, p.kind, state)) if two else fn(x)
            if out is None:
                return None
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the hook at {name} returned {got}; return None or a tensor shaped like its "
                                 f"input {tuple(x.shape)}")
            if thresholds is None or state is None:
                return out
            key = ("hook_mask", id(thresholds))
            if key not in state.cache:
                thresholds.update(state)
                state.cache[key] = thresholds.mask(state)
            m = state.cache[key].to(x.device)
            return torch.where(m.view(*m.shape, *([1] * (x.dim() - 2))), out.to(x.dtype), x)

        return run

    def record(self) -> dict[str, Any]:
        name = self.point.name if isinstance(self.point, HookPoint) else str(self.point)
        return {"kind": self.kind, "points": [name], "function": self.label, "positions": self.positions}


def _arity(fn: Callable[..., Any]) -> int:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 1
    if any(q.kind == q.VAR_POSITIONAL for q in params):
        return 2
    return sum(1 for q in params if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD) and q.default is q.empty)


# -- rotations (norm-preserving steering) -----------------------------------------------------------------
def rotate_towards(x: torch.Tensor, d: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate each vector of ``x`` (``[..., width]``) by ``angle`` radians in the plane it spans with the unit
    direction ``d``, towards ``d`` (negative: away from it), keeping its norm. A vector parallel to ``d`` has
    no such plane and is left alone."""
    xf = x.double()
    dd = d.to(xf.device).double()
    n = xf.norm(dim=-1, keepdim=True)
    u = xf / n.clamp_min(1e-30)
    w = dd - (u @ dd)[..., None] * u  # the part of d orthogonal to x
    wn = w.norm(dim=-1, keepdim=True)
    ok = wn > 1e-9
    w_hat = torch.where(ok, w / wn.clamp_min(1e-30), torch.zeros_like(w))
    out = n * (torch.cos(torch.tensor(angle, dtype=xf.dtype)) * u + torch.sin(torch.tensor(angle, dtype=xf.dtype))
               * w_hat)
    return torch.where(ok, out, xf).to(x.dtype)


def set_angle(x: torch.Tensor, d: torch.Tensor, target: float) -> torch.Tensor:
    """Angular steering: put each vector of ``x`` at ``target`` radians from the unit direction ``d``, in the plane
    it spans with ``d``, keeping its norm (``target=0``: along ``d``; ``pi/2``: orthogonal to it)."""
    xf = x.double()
    dd = d.to(xf.device).double()
    n = xf.norm(dim=-1, keepdim=True)
    e = xf - (xf @ dd)[..., None] * dd  # x's component orthogonal to d
    en = e.norm(dim=-1, keepdim=True)
    e_hat = torch.where(en > 1e-9, e / en.clamp_min(1e-30), torch.zeros_like(e))
    t = torch.tensor(target, dtype=xf.dtype)
    return (n * (torch.cos(t) * dd + torch.sin(t) * e_hat)).to(x.dtype)


class Rotate(Intervention):
    """Norm-preserving steering at ``kind`` of ``layers`` (default every layer): rotate each activation by
    ``angle`` degrees towards ``direction`` in the plane of the two (``mode='by'``), or set its angle to
    ``direction`` to ``angle`` degrees (``mode='to'``, angular steering). Unlike addition, the activation's norm
    never changes - the hypothesis that prompting rotates the residual stream is tested with it."""

    kind = "rotate"

    def __init__(self, direction: torch.Tensor, angle: float, *, mode: str = "by",
                 layers: str | int | Iterable[int] | None = None, kind: str = "resid_post",
                 positions: str = DEFAULT_STEER_POSITIONS,
                 eoi_ids: Sequence[int] | None = None, source: Mapping[str, Any] | None = None):
        import math

        if mode not in ("by", "to"):
            raise InputError(f"rotation mode must be 'by' (rotate by an angle) or 'to' (set the angle), not {mode!r}")
        self.angle_deg = _finite(angle, "angle")
        if mode == "to" and not 0 <= self.angle_deg <= 180:
            raise InputError(f"a target angle must be within 0..180 degrees, got {angle}")
        self.r, self.mode, self.kind_name = unit(direction), mode, kind
        self.radians = math.radians(self.angle_deg)
        self.layers_spec = layers if layers is None or isinstance(layers, (str, int)) else list(layers)
        self.positions = check_steer_positions(positions)
        self.eoi_ids = list(eoi_ids) if eoi_ids is not None else None
        self.source = dict(source or {})
        self._layers: list[int] | None = None

    def edits(self, target: HookTarget) -> list[Edit]:
        if self.kind_name not in RESIDUAL_KINDS:
            raise InputError(f"rotations act in the residual basis; {self.kind_name!r} is not one of "
                             f"{', '.join(RESIDUAL_KINDS)}")
        if self.r.numel() != target.d_model:
            raise InputError(f"direction has {self.r.numel()} entries; the model's d_model is {target.d_model}")
        if self.positions == "from_eoi" and not self.eoi_ids:
            raise InputError("positions='from_eoi' needs the end-of-instruction token ids (a chat template)")
        self._layers = layer_list(self.layers_spec, target.n_layers)
        thresholds = _Thresholds(self.positions, self.eoi_ids) if self.positions != "all" else None
        r, rad, mode = self.r, self.radians, self.mode

        def rotate(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor:
            new = rotate_towards(x, r, rad) if mode == "by" else set_angle(x, r, rad)
            if state is None or (thresholds is None and not state.padded):
                return new
            if thresholds is None:
                m = state.mask
            else:
                key = ("rotate_mask", id(thresholds))
                if key not in state.cache:
                    thresholds.update(state)
                    state.cache[key] = thresholds.mask(state)
                m = state.cache[key]
            return torch.where(m.to(x.device)[..., None], new, x)

        return [Edit(HookPoint(i, self.kind_name), rotate) for i in self._layers]

    def record(self) -> dict[str, Any]:
        layers = self._layers if self._layers is not None else self.layers_spec
        return {"kind": self.kind, "mode": self.mode, "angle_degrees": self.angle_deg, "point": self.kind_name,
                "layers": "all" if layers is None else layers, "positions": self.positions, **self.source}

