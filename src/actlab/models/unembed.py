"""The unembedding as a function of residual-stream vectors: the model's own final norm (applied afresh to
whatever it is given, so every layer is normalised by its own scale, never a cached one) + OPT's
``project_out`` where present + the unembedding + Gemma-2/3's final logit soft-capping. The logit lens,
vocabulary projections of directions and the tuned lens share it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import Model


class Unembed:
    """Final norm + unembedding of a model, as a function of residual-stream vectors."""

    def __init__(self, model: Model):
        self.model = model
        self.norm = model.final_norm_module
        self.head = model.lm_head
        self.project_out = model.project_out
        cap = getattr(model.config, model.adapter.softcap_attr, None) if model.adapter.softcap_attr else None
        self.softcap: float | None = float(cap) if cap else None
        self.scale: float | None = model.adapter.logit_scale

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Logits (float32, on ``x``'s device) for vectors ``x`` ``[..., d_model]``."""
        return self.forward(x, normalize=normalize)

    def forward(self, x: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """:meth:`__call__` with autograd on (training a tuned lens differentiates through it)."""
        w = self.head.weight
        out_device = x.device
        h = x.to(device=w.device, dtype=w.dtype)
        if normalize:
            h = self.norm(h.to(_module_device(self.norm, w.device)))
        if self.project_out is not None:
            h = self.project_out(h)
        logits = self.head(h.to(w.device)).float()
        if self.scale is not None:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.to(out_device)


    @torch.no_grad()
    def direction_logits(self, v: torch.Tensor) -> torch.Tensor:
        """How a residual *direction* moves each logit: ``(norm(v) - norm(0)) @ W_U^T``.

        Subtracting ``norm(0)`` removes a LayerNorm bias (a constant offset, not part of the direction);
        the RMS/LN scale is a positive scalar, so rankings match ``W_U (g * v)`` (centred for LayerNorm)."""
        return self.directions_logits(v.reshape(1, -1))[0]

    @torch.no_grad()
    def directions_logits(self, v: torch.Tensor) -> torch.Tensor:
        """:meth:`direction_logits` for each row of ``v`` ``[n, d_model]`` -> ``[n, vocab]`` (float32, CPU)."""
        w = self.head.weight
        h = v.to(device=w.device, dtype=w.dtype)
        normed = self.norm(h) - self.norm(torch.zeros_like(h[:1]))
        if self.project_out is not None:
            normed = self.project_out(normed)
        out = (normed @ w.T).float().cpu()
        return out * self.scale if self.scale is not None else out


def _module_device(m: torch.nn.Module, default: torch.device) -> torch.device:
    for p in m.parameters():
        return p.device
    return default
