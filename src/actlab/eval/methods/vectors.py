"""Steering vectors extracted from the behaviour's extraction set and added at one layer times a multiplier:
the mean of differences (CAA), the first principal component of the differences (repeng-style PCA), a logistic
probe's direction - and the mean difference added on top of the instruction prompt (prompting + vector)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...hooks.points import HookPoint
from ...steering.prefix import CellEdits
from .base import Cell, Method

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context


class Extracted(Method):
    """A vector extracted with ``extraction`` (a :data:`actlab.steering.extraction.METHODS` name)."""

    extraction = "mean_diff"
    strength = "multiplier"
    additive = True

    def vector_at(self, ctx: Context, beh: Behaviour, layer: int) -> Any:
        return ctx.vector(beh, self.extraction)[layer]

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        vec = ctx.vector(beh, self.extraction)
        return [Cell(self.name, self.variant, layer, m,
                     CellEdits(add={HookPoint(layer, vec.point): m * vec[layer].double()}))
                for layer in layers for m in ctx.cfg.grid.multipliers if m != 0]


class MeanDiff(Extracted):
    name = "mean_diff"


class PCA(Extracted):
    name, extraction = "pca", "pca"


class Probe(Extracted):
    name, extraction = "logreg", "logreg"


class PromptAndVector(Extracted):
    name, variant = "prompt+mean_diff", "instruction"
