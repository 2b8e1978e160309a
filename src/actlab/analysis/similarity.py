"""Cosine similarity of steering vectors: across layers of one vector set, and across models.

Comparisons check the vectors' metadata first: vectors read at different hook points or positions, with
different widths or layer counts, or from different model families are refused (naming the fields that
differ) unless ``force=True``. Different model *names* of one architecture are the point of a cross-model
comparison (a base and its fine-tune) and are allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..steering.vector import SteeringVector, VectorMismatchError

COMPARE_KEYS = ("point", "d", "n_layers", "model_family", "positions")


def _field(v: SteeringVector, key: str) -> object:
    if key == "point":
        return v.point
    if key == "d":
        return v.d
    return v.meta.get(key)


def check_comparable(vectors: Sequence[SteeringVector], names: Sequence[str] | None = None, *,
                     keys: Sequence[str] = COMPARE_KEYS, force: bool = False) -> list[str]:
    """Refuse vectors whose metadata differ on ``keys``; returns the differences found (forced or none)."""
    names = list(names or [f"vector {i}" for i in range(len(vectors))])
    diffs = []
    for key in keys:
        vals = [_field(v, key) for v in vectors]
        known = [x for x in vals if x is not None]
        if len(set(map(str, known))) > 1:
            diffs.append(f"{key}: " + ", ".join(f"{n}={x!r}" for n, x in zip(names, vals, strict=True)))
    if diffs and not force:
        raise VectorMismatchError("the vectors are not comparable (" + "; ".join(diffs) + "); pass force=True "
                                  "(--force) to compare them anyway")
    if any(v.d != vectors[0].d for v in vectors):
        raise VectorMismatchError("vectors of different widths cannot be compared even with force: "
                                  + ", ".join(f"{n}={v.d}" for n, v in zip(names, vectors, strict=True)))
    return diffs


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity in float64 (0 for a zero vector)."""
    a, b = a.double(), b.double()
    den = a.norm() * b.norm()
    return float(a @ b / den) if den > 0 else 0.0


def layer_cosine_matrix(vec: SteeringVector) -> torch.Tensor:
    """``[L, L]`` cosine similarity between the vector's layers (diagonal 1)."""
    m = torch.stack([vec[k].double() for k in vec.layers])
    u = m / m.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return u @ u.T


def cross_model_cosine(a: SteeringVector, b: SteeringVector, *, force: bool = False) -> dict[int, float]:
    """Per common layer, the cosine between two models' vectors for the same behaviour."""
    check_comparable([a, b], ["A", "B"], force=force)
    common = [k for k in a.layers if k in b.vectors]
    if not common:
        raise VectorMismatchError(f"the vectors share no layer (A: {a.layers}, B: {b.layers})")
    return {k: cosine(a[k], b[k]) for k in common}
