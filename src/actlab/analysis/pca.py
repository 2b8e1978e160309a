"""2-D PCA of vectors from several layers and models.

Normalisation (stated in every output): each vector is scaled to unit L2 norm before PCA, so the
projection shows directions, not magnitudes (vector norms grow with depth and would otherwise dominate);
the unit vectors are then centred and projected on their first two principal components.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


def class_pca(positive: torch.Tensor, negative: torch.Tensor) -> dict[str, Any]:
    """PCA of two classes of activations (``[n, d]`` and ``[m, d]``, e.g. a dataset's items with the matching
    and the non-matching answer) on the pooled rows, centred, not scaled: their 2-D coordinates, the variance
    the two components explain, and the separation of the classes in that plane - the distance between the class
    centroids over the pooled within-class spread, ``|c_P - c_N| / sqrt((s_P^2 + s_N^2) / 2)`` with ``s^2`` the
    mean squared distance of a class's points to its centroid (0 = the classes overlap on average)."""
    coords, explained = principal_components(torch.cat([positive, negative]).double(), 2)
    cp, cn = coords[:len(positive)], coords[len(positive):]
    spread = (float(((cp - cp.mean(0)) ** 2).sum(1).mean()) + float(((cn - cn.mean(0)) ** 2).sum(1).mean())) / 2
    sep = float((cp.mean(0) - cn.mean(0)).norm()) / max(spread, 1e-30) ** 0.5
    return {"positive": cp.tolist(), "negative": cn.tolist(), "explained": explained, "separation": sep}
