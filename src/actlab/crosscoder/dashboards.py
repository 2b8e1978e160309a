"""Feature pages of a crosscoder's model-specific latents: each latent's top-activating contexts (its code read
from both models' activations of the same tokens) and what its decoder direction in the owning model promotes
through that model's unembedding - the SAE dashboards (:func:`actlab.sae.dashboard.feature_dashboards`) with the
crosscoder seen from one model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .model import Crosscoder

if TYPE_CHECKING:
    from ..models.model import Model


class ModelView(nn.Module):
    """A crosscoder as a dictionary of model ``i``: its codes (from every model's activations) and model ``i``'s
    decoder rows."""

    def __init__(self, cc: Crosscoder, i: int):
        super().__init__()
        self.cc, self.i = cc, i
        self.cfg = SimpleNamespace(d_sae=cc.cfg.d_sae, hook_point=cc.cfg.hook_points[i],
                                   name=f"{cc.cfg.name} ({['base', 'tuned'][i] if i < 2 else i})")

    @property
    def W_dec(self) -> torch.Tensor:
        return self.cc.W_dec[self.i]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.cc.encode(x)


def paired_read(models: Sequence[Model], points: Sequence[str]):
    """``read(batch)`` for :func:`~actlab.sae.features.scan_codes`: every model's activations of the batch's tokens
    side by side, and the lengths."""
    names = [m.parse_points(p)[0].name for m, p in zip(models, points, strict=True)]

    def read(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        parts, lengths = [], None
        for m, n in zip(models, names, strict=True):
            acts = m.activations(batch, n, positions="all", dtype=torch.float32)
            parts.append(acts[n].cpu())
            lengths = acts.lengths if lengths is None else lengths
        assert lengths is not None
        return torch.cat(parts, -1), lengths

    return read


@torch.no_grad()
def latent_dashboards(cc: Crosscoder, models: Sequence[Model], points: Sequence[str], texts: Sequence[str],
                      result: Mapping[str, Any], *, n: int = 8, max_length: int = 128,
                      contexts: int = 6) -> dict[str, dict[str, Any]]:
    """Dashboards of the ``n`` latents leaning furthest to each model (past the shared band: the model-specific
    ones first), seen from that model: ``{"tuned-leaning" | "base-leaning": dashboard}`` (the SAE dashboard
    format, drawn by :func:`actlab.report.features.feature_page`)."""
    from ..sae.dashboard import feature_dashboards

    out: dict[str, dict[str, Any]] = {}
    read = paired_read(models, points)
    band = result["thresholds"]
    live = [x for x in result["latents"] if x["frequency"] > 0]
    tuned = sorted((x for x in live if x["delta"] > band["shared_high"]), key=lambda x: -x["delta"])
    base = sorted((x for x in live if x["delta"] < band["shared_low"]), key=lambda x: x["delta"])
    for owner, name, chosen in ((1, "tuned-leaning", tuned[:n]), (0, "base-leaning", base[:n])):
        if not chosen:
            continue
        dash = feature_dashboards(models[owner], ModelView(cc, owner), texts, features=[x["latent"] for x in chosen],
                                  contexts=contexts, max_length=max_length, read=read)
        dash["dictionary"] = f"{name} latents of {cc.cfg.name} ({models[owner].name}'s decoder)"
        out[name] = dash
    return out
