"""From a hook point to the module input or output it lives at, through the kind table.

``hooks`` knows nothing of :class:`actlab.Model`; it works on anything that implements :class:`HookTarget`:
a ``base`` module (the one owning the decoder layers, whose inputs describe each forward pass), the layer
count and widths, and ``module(field, layer)`` naming the native module behind an adapter field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import HookPointError
from .core import ForwardState, Handler, HookSession, Order
from .points import HookPoint, Site, kind


@runtime_checkable
class HookTarget(Protocol):
    """What the hooks layer needs from a model (``actlab.Model`` implements it)."""

    base: nn.Module

    @property
    def n_layers(self) -> int: ...

    @property
    def d_model(self) -> int: ...

    @property
    def d_mlp(self) -> int: ...

    @property
    def n_heads(self) -> int:
        """Attention (query) heads per layer."""
        ...

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads per layer (fewer than ``n_heads`` with grouped-query attention)."""
        ...

    @property
    def d_head(self) -> int:
        """Width of one head's queries, keys and values."""
        ...

    def module(self, field: str, layer: int | None) -> nn.Module | None:
        """The module an adapter field names (``block``: decoder layer ``layer`` itself), or None if absent."""
        ...


@dataclass(frozen=True)
class Resolved:
    """A concrete site: ``module``'s input or output (or an attention site, :mod:`actlab.hooks.attention`);
    ``view`` says how handlers see it (``heads``: last dim split per head; ``result``: per-head outputs)."""

    module: nn.Module
    where: str
    view: str | None = None
    heads: int = 0
    scale: float = 1.0  # the residual receives scale x the module's output (a scaled residual branch)


def resolve(target: HookTarget, site: Site, p: HookPoint) -> Resolved | None:
    k = kind(p.kind)
    layer = p.layer if p.layer is not None else k.at_layer
    if site.field == "attn_o":
        mod = target.module("attn_o", layer) or target.module("attn_proj", layer)
    else:
        mod = target.module(site.field, layer)
    if mod is None:
        return None
    heads = int(target.n_heads) if k.view else 0
    branch = getattr(target, "branch_scale", None)
    scale = float(branch(site.field)) if branch is not None and site.where == "out" else 1.0
    return Resolved(mod, site.where, k.view if site is k.read else None, heads, scale)


def attach(session: HookSession, r: Resolved, fn: Handler, *, write: bool, order: Order) -> None:
    """Add ``fn`` at a resolved site, seen through the site's view (the one place views are applied)."""
    if r.view is None and r.scale != 1.0:  # handlers see what the residual receives: scale x the output
        c = r.scale

        def scaled(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
            out = fn(x * c, state)
            return None if out is None else out / c

        session.add(r.module, r.where, scaled, write=write, order=order)
        return
    if r.view is None:
        session.add(r.module, r.where, fn, write=write, order=order)
        return
    h = r.heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], h, x.shape[-1] // h)

    if r.view == "heads":
        def heads_fn(x: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
            out = fn(split(x), state)
            return None if out is None else out.reshape(x.shape)

        session.add(r.module, r.where, heads_fn, write=write, order=order)
        return
    # "result": per-head contributions z_h W_O[h]^T, computed from the projection's input z
    w_o = _out_weight(r.module)

    def result(x: torch.Tensor) -> torch.Tensor:
        z = split(x)
        return torch.einsum("bthd,mhd->bthm", z, w_o.view(w_o.shape[0], h, -1).to(z.dtype))

    if not write:
        session.add(r.module, r.where, lambda x, state: fn(result(x), state), write=False, order=order)
        return
    held: dict[str, torch.Tensor] = {}

    def edit_in(x: torch.Tensor, state: ForwardState | None) -> None:
        new = fn(result(x), state)
        if new is not None:
            bias = getattr(r.module, "bias", None)
            held["out"] = new.sum(dim=-2) + (bias.to(new.dtype) if bias is not None else 0)

    def edit_out(y: torch.Tensor, state: ForwardState | None) -> torch.Tensor | None:
        out = held.pop("out", None)
        return None if out is None else out.reshape(y.shape).to(y.dtype)

    session.add(r.module, "in", edit_in, write=False, order=order)
    session.add(r.module, "out", edit_out, write=True, order=order)


def _out_weight(module: nn.Module) -> torch.Tensor:
    """The output projection as [d_model, n_heads * d_head] (GPT-2's Conv1D stores it transposed)."""
    w = module.weight
    return w if isinstance(module, nn.Linear) else w.T


def _missing(target: HookTarget, field: str, p: HookPoint) -> HookPointError:
    why = getattr(getattr(target, "adapter", None), "blocks_only", None)
    if why:
        return HookPointError(f"{p.name}: this model is read at its block outputs only - {why}")
    return HookPointError(f"{p.name}: this model has no {field!r} module to hook")


def _need(target: HookTarget, site: Site, p: HookPoint) -> Resolved:
    r = resolve(target, site, p)
    if r is None:
        raise _missing(target, site.field, p)
    return r


@dataclass(frozen=True)
class ReadPlan:
    """How to read a point: at one site, or (composite kinds without a module) as ``base + part``."""

    site: Resolved | None
    base: HookPoint | None = None
    part: Resolved | None = None


def read_plan(target: HookTarget, p: HookPoint) -> ReadPlan:
    k = kind(p.kind)
    direct = resolve(target, k.read, p)
    if direct is not None:
        return ReadPlan(direct)
    if k.composite is None:
        raise _missing(target, k.read.field, p)
    base, part = k.composite
    return ReadPlan(None, HookPoint(p.layer, base), _need(target, part, p))


@dataclass(frozen=True)
class WritePlan:
    """Where an edit of a point is written: at ``site``; for composite kinds the site carries only a part of
    the value and ``base`` is the point to add back (an edit ``f`` becomes ``f(base + a) - base``)."""

    site: Resolved
    base: HookPoint | None = None
    base_site: Resolved | None = None


def write_plan(target: HookTarget, p: HookPoint) -> WritePlan:
    k = kind(p.kind)
    if k.read_only:
        raise HookPointError(f"{p.name} can be read, not edited: {k.read_only}")
    if k.composite is None:
        return WritePlan(_need(target, k.read, p))
    base, part = k.composite
    base_point = HookPoint(p.layer, base)
    return WritePlan(_need(target, part, p), base_point, _need(target, kind(base).read, base_point))
