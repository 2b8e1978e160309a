"""What a method is: a way to get an intervention (or a prompt) from a behaviour's extraction set, and the grid
cells it is evaluated at.

A method names the prompt *variant* its rows are built with (``plain``; ``instruction``: a system prompt
describing the behaviour; ``few_shot``: examples from the extraction set as earlier turns) and what its strength
is (a multiplier, an angle, or none); :meth:`Method.cells` returns one :class:`Cell` per (layer, strength), each
a :class:`~actlab.steering.prefix.CellEdits` the evaluation engine applies. Adding a method is one file here and
one line in :data:`actlab.eval.methods.METHODS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ...steering.prefix import CellEdits

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context

VARIANTS = ("plain", "instruction", "few_shot")


@dataclass
class Cell:
    """One grid cell of one method: its edits, and where it sits in the grid."""

    method: str
    variant: str
    layer: int | None = None
    strength: float | None = None
    edits: CellEdits = field(default_factory=CellEdits)

    @property
    def key(self) -> str:
        return f"{self.method}|{self.layer}|{self.strength:g}" if self.strength is not None else \
            f"{self.method}|{self.layer}|-"

    def label(self) -> dict[str, Any]:
        return {"method": self.method, "variant": self.variant, "layer": self.layer, "strength": self.strength}


class Method:
    """Base of every method (see module docstring)."""

    name: ClassVar[str] = ""
    variant: ClassVar[str] = "plain"
    strength: ClassVar[str] = "none"  # "multiplier", "angle" or "none"
    additive: ClassVar[bool] = False  # adds a vector: the steerability slopes apply

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        """The grid cells (the method's own strength list comes from the config)."""
        raise NotImplementedError

    def vector_at(self, ctx: Context, beh: Behaviour, layer: int) -> Any:
        """The unscaled direction an additive method adds at ``layer`` (for the steerability slopes)."""
        raise NotImplementedError
