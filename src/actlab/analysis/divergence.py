"""Per-layer parameter divergence between two checkpoints of one architecture.

For every parameter present in both, the L2 norm of the difference; grouped per layer (and per module
inside a layer: attention, MLP, norms) and for the parameters outside the layers (embeddings, final norm,
unembedding). Different shapes are refused, naming the first mismatching parameter. Layers are ranked by
the whole layer's divergence (``rank_by="layer"``) or by its MLP's (``"mlp"``, the LFP study's choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ActlabError

if TYPE_CHECKING:
    from ..models.model import Model


RANK_BY = ("layer", "mlp")


class DivergenceError(ActlabError):
    """The two models do not have the same parameters and shapes."""


@dataclass
class Divergence:
    per_layer: list[float]  # L2 norm of the difference of all of a layer's parameters
    per_module: dict[str, list[float]]  # module group -> per layer
    relative: list[float]  # per_layer / L2 norm of the first model's layer parameters
    outside: dict[str, float] = field(default_factory=dict)

    def ranking(self, rank_by: str = "layer") -> list[float]:
        """The per-layer values layers are ranked by: ``layer`` (all of a layer's parameters) or ``mlp`` (its MLP
        parameters only, as the LFP study ranks)."""
        if rank_by == "layer":
            return self.per_layer
        if rank_by in self.per_module:
            return self.per_module[rank_by]
        valid = ", ".join(["layer", *sorted(self.per_module)])
        raise DivergenceError(f"cannot rank layers by {rank_by!r}; valid: {valid}")

    def top_layers(self, k: int = 5, *, rank_by: str = "layer") -> list[int]:
        """The ``k`` layers that changed most (by ``rank_by``), most changed first; layers that did not change
        at all are never listed, so fewer than ``k`` may come back."""
        if k < 1:
            raise DivergenceError(f"top_k must be at least 1, got {k}")
        values = self.ranking(rank_by)
        changed = [i for i, v in enumerate(values) if v > 0]
        return sorted(changed, key=lambda i: -values[i])[:k]

    def to_dict(self) -> dict[str, Any]:
        """The measurements (norms of differences); the ranking is added by whoever chooses ``k``."""
        return dict(self.__dict__)


def _group(name: str) -> str:
    low = name.lower()
    if any(k in low for k in ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj", "qkv")):
        return "attn"
    if any(k in low for k in ("mlp", "fc1", "fc2", "fc_in", "fc_out", "gate", "up_proj", "down_proj")):
        return "mlp"
    if any(k in low for k in ("norm", "ln_")):
        return "norm"
    return "other"


@torch.no_grad()
def parameter_divergence(a: Model, b: Model) -> Divergence:
    """L2 norm of ``b - a`` per layer and module; raises :class:`DivergenceError` on mismatched shapes."""
    if type(a.hf) is not type(b.hf) or a.n_layers != b.n_layers:
        raise DivergenceError(f"different architectures: {type(a.hf).__name__} with {a.n_layers} layers vs "
                              f"{type(b.hf).__name__} with {b.n_layers} layers")
    # every name, tied ones included: a model with tied embeddings compares with its untied copy (e.g. one that
    # `steer ablate` orthogonalised), its lm_head being its embedding matrix
    pa = dict(a.hf.named_parameters(remove_duplicate=False))
    pb = dict(b.hf.named_parameters(remove_duplicate=False))
    for name, t in pa.items():
        if name not in pb:
            raise DivergenceError(f"parameter {name!r} exists only in the first model")
        if tuple(t.shape) != tuple(pb[name].shape):
            raise DivergenceError(f"parameter {name!r} has shape {tuple(t.shape)} in the first model and "
                                  f"{tuple(pb[name].shape)} in the second")
    extra = [n for n in pb if n not in pa]
    if extra:
        raise DivergenceError(f"parameter {extra[0]!r} exists only in the second model")
    prefix = a.adapter.layers + "."
    L = a.n_layers
    sq = [0.0] * L
    base = [0.0] * L
    mods: dict[str, list[float]] = {}
    outside: dict[str, float] = {}
    for name, ta in pa.items():
        d = float((pb[name].double().to(ta.device) - ta.double()).pow(2).sum())
        if name.startswith(prefix):
            i = int(name[len(prefix):].split(".", 1)[0])
            sq[i] += d
            base[i] += float(ta.double().pow(2).sum())
            g = _group(name[len(prefix):].split(".", 1)[1])
            mods.setdefault(g, [0.0] * L)[i] += d
        else:
            outside[name] = d ** 0.5
    per_layer = [x ** 0.5 for x in sq]
    return Divergence(per_layer, {g: [x ** 0.5 for x in v] for g, v in mods.items()},
                      [p / (b0 ** 0.5) if b0 > 0 else 0.0 for p, b0 in zip(per_layer, base, strict=True)], outside)
