"""A vector from a file (``vectors: {name: file}``): any vector made elsewhere, evaluated on the same grid."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...hooks.points import HookPoint
from ...steering.prefix import CellEdits
from .base import Cell, Method

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context


class FromFile(Method):
    name = "file"
    strength = "multiplier"
    additive = True

    def vector_at(self, ctx: Context, beh: Behaviour, layer: int) -> Any:
        return ctx.file_vector()[layer]

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        vec = ctx.file_vector()
        return [Cell(self.name, self.variant, layer, m,
                     CellEdits(add={HookPoint(layer, vec.point): m * vec[layer].double()}))
                for layer in layers if layer in vec.vectors for m in ctx.cfg.grid.multipliers if m != 0]
