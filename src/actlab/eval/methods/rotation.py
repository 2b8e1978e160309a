"""Rotation towards the mean-difference direction by an angle, at one layer, keeping the activation's norm (the
control-vectors study's hypothesis that steering - and prompting - rotates the residual stream). 0 degrees
changes nothing; 180 reflects the activation's component in the plane of the direction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...hooks.interventions import unit
from ...hooks.points import HookPoint
from ...steering.prefix import CellEdits
from .base import Cell, Method

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context


class Rotation(Method):
    name = "rotation"
    strength = "angle"

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        vec = ctx.vector(beh, "mean_diff")
        return [Cell(self.name, self.variant, layer, a,
                     CellEdits(rotate=(HookPoint(layer, vec.point), unit(vec[layer]), float(a), "by")))
                for layer in layers for a in ctx.cfg.grid.angles]
