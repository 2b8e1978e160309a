"""Divergences between next-token distributions given as logits (pure tensor math, shared by the steering,
evaluation, prompting and transcoder measurements)."""

from __future__ import annotations

import torch


def kl_from_logits(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Per row, KL(base || other) of the next-token distributions, in nats (computed in float64)."""
    lp = torch.log_softmax(base.double(), -1)
    lq = torch.log_softmax(other.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)
