"""SAE feature steering: at each layer with a dictionary (``sae: {layer: folder}``), the features whose decoder
directions have the largest cosine with the mean-difference vector (``sae_features`` of them), their unit
decoder directions summed and scaled to the mean-difference vector's norm, added times a multiplier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ...errors import InputError
from ...hooks.points import HookPoint
from ...steering.prefix import CellEdits
from .base import Cell, Method

if TYPE_CHECKING:
    from ..behaviours import Behaviour
    from ..context import Context


def feature_vector(decoder: torch.Tensor, target: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """The ``n`` decoder rows most aligned with ``target`` (cosine), as one direction of ``target``'s norm."""
    dec = decoder.double()
    t = target.double().reshape(-1)
    cos = (dec @ t) / (dec.norm(dim=-1) * t.norm()).clamp_min(1e-12)
    top = torch.topk(cos, min(n, len(cos))).indices.tolist()
    v = sum(dec[f] / dec[f].norm().clamp_min(1e-12) for f in top)
    assert isinstance(v, torch.Tensor)
    return v / v.norm().clamp_min(1e-12) * t.norm(), top


class SAEFeatures(Method):
    name = "sae"
    strength = "multiplier"
    additive = True

    def vector_at(self, ctx: Context, beh: Behaviour, layer: int) -> Any:
        sae = ctx.dictionary(layer)
        if sae is None:
            raise InputError(f"the sae method has no dictionary for layer {layer} (sae: in the config)")
        v, feats = feature_vector(sae.W_dec.detach().cpu(), ctx.vector(beh, "mean_diff")[layer], ctx.cfg.sae_features)
        ctx.note(f"{beh.name}: sae features at layer {layer}: {feats}")
        return v

    def cells(self, ctx: Context, beh: Behaviour, layers: Sequence[int]) -> list[Cell]:
        out = []
        for layer in layers:
            if ctx.dictionary(layer) is None:
                continue
            v = self.vector_at(ctx, beh, layer)
            out += [Cell(self.name, self.variant, layer, m, CellEdits(add={HookPoint(layer, "resid_post"): m * v}))
                    for m in ctx.cfg.grid.multipliers if m != 0]
        return out
