"""Directional ablation of the mean-difference direction found at one layer, at every layer and token (Arditi
et al. 2024): the behaviour's direction removed - the negative of steering towards it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...steering.prefix import CellEdits
from .base import Cell, Method

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context


class Ablation(Method):
    name = "ablation"

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        vec = ctx.vector(beh, "mean_diff")
        return [Cell(self.name, self.variant, layer, None, CellEdits(ablate=(vec[layer], None))) for layer in layers]
