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


def pca_2d(vectors: Sequence[torch.Tensor], labels: Sequence[str], layers: Sequence[int]) -> Projection:
    """Project unit-normalised vectors on their first two principal components."""
    if len(vectors) < 2:
        raise ValueError("PCA needs at least two vectors")
    x = torch.stack([v.double() / v.double().norm().clamp_min(1e-12) for v in vectors])
    x = x - x.mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = x @ vh[:k].T
    if k < 2:
        coords = torch.cat([coords, torch.zeros(len(x), 2 - k, dtype=coords.dtype)], 1)
    var = s**2
    total = float(var.sum()) or 1.0
    return Projection(coords.float(), list(labels), list(layers), [float(v) / total for v in var[:2]])
