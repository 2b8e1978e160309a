"""From a hook point to the module input or output it lives at, through the kind table.

``hooks`` knows nothing of :class:`actlab.Model`; it works on anything that implements :class:`HookTarget`:
a ``base`` module (the one owning the decoder layers, whose inputs describe each forward pass), the layer
count and widths, and ``module(field, layer)`` naming the native module behind an adapter field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import nn

from ..errors import HookPointError
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

    def module(self, field: str, layer: int | None) -> nn.Module | None:
        """The module an adapter field names (``block``: decoder layer ``layer`` itself), or None if absent."""
        ...


@dataclass(frozen=True)
class Resolved:
    """A concrete site: ``module``'s input or output."""

    module: nn.Module
    where: str


def resolve(target: HookTarget, site: Site, p: HookPoint) -> Resolved | None:
    layer = p.layer if p.layer is not None else kind(p.kind).at_layer
    mod = target.module(site.field, layer)
    return None if mod is None else Resolved(mod, site.where)


def _need(target: HookTarget, site: Site, p: HookPoint) -> Resolved:
    r = resolve(target, site, p)
    if r is None:
        raise HookPointError(f"{p.name}: this model has no {site.field!r} module to hook")
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
        raise HookPointError(f"{p.name}: this model has no {k.read.field!r} module to hook")
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
    if k.composite is None:
        return WritePlan(_need(target, k.read, p))
    base, part = k.composite
    base_point = HookPoint(p.layer, base)
    return WritePlan(_need(target, part, p), base_point, _need(target, kind(base).read, base_point))
