"""2-D PCA of vectors from several layers and models.

Normalisation (stated in every output): each vector is scaled to unit L2 norm before PCA, so the
projection shows directions, not magnitudes (vector norms grow with depth and would otherwise dominate);
the unit vectors are then centred and projected on their first two principal components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

NORMALISATION = "each vector scaled to unit L2 norm, then centred, before PCA"


@dataclass
class Projection:
    coords: torch.Tensor  # [n, 2]
    labels: list[str]  # e.g. the model name
    layers: list[int]
    explained: list[float]  # fraction of variance of the first two components
    normalisation: str = NORMALISATION


def principal_components(x: torch.Tensor, k: int = 2, *, unit: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Rows of ``x`` ``[n, d]`` projected on their first ``k`` principal components (after centring; each row
    scaled to unit norm first with ``unit``), in float64, and the fraction of variance each component explains.
    Fewer components than ``k`` (too few rows) are padded with zeros."""
    if x.shape[0] < 2:
        raise ValueError("PCA needs at least two vectors")
    x = x.double()
    if unit:
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    m = min(k, vh.shape[0])
    coords = x @ vh[:m].T
    if m < k:
        coords = torch.cat([coords, torch.zeros(len(x), k - m, dtype=coords.dtype)], 1)
    var = s**2
    total = float(var.sum()) or 1.0
    return coords, [float(v) / total for v in var[:k]]


def pca_2d(vectors: Sequence[torch.Tensor], labels: Sequence[str], layers: Sequence[int]) -> Projection:
    """Project unit-normalised vectors on their first two principal components."""
    coords, explained = principal_components(torch.stack([v.reshape(-1) for v in vectors]), 2, unit=True)
    return Projection(coords.float(), list(labels), list(layers), explained)
