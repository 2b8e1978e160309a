"""Prompting baselines: an instruction describing the behaviour (a system prompt, or a line before the prompt for
a model without a chat template), and few-shot examples from the extraction set as earlier turns. One cell each:
the prompt changes, the model is not edited."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Cell, Method

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context


class Prompt(Method):
    name = "prompt"
    variant = "instruction"

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        return [Cell(self.name, self.variant)]


class FewShot(Method):
    name = "few_shot"
    variant = "few_shot"

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        return [Cell(self.name, self.variant)]
