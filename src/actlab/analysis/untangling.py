"""How layers untangle a contrastive dataset (the control-vectors study): per layer, how linearly separable the
two sets are on held-out items, how far apart items lie, and how fast the spread grows with depth.

Pure functions on activations (``[n, d]`` per set and layer):

- :func:`probe_accuracy`: a standardised logistic-regression probe trained on a random ``1 - test_fraction``
  of each set and scored on the rest (held-out accuracy; chance is the larger set's share of the test items);
  paired sets (equal length) are split by pair;
- :func:`distances`: mean Euclidean distance over pairs of items - all pairs, pairs within a set, pairs across;
- :func:`exponential_fit`: least squares of ``log y = a + b * layer``; ``growth = exp(b)`` is the factor per
  layer, ``r2`` the fit's R^2 in log space (near 1: near-exponential growth, as the study reports for the
  mean variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def exponential_fit(layers: Sequence[int], values: Sequence[float]) -> dict[str, Any] | None:
    """``log(values) = a + b * layers`` by least squares over the positive values; None with fewer than two."""
    pts = [(float(x), math.log(v)) for x, v in zip(layers, values, strict=True) if v > 0 and math.isfinite(v)]
    if len(pts) < 2 or len({x for x, _ in pts}) < 2:
        return None
    x = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"growth": float(math.exp(b)), "log_slope": float(b), "intercept": float(a), "r2": r2,
            "layers": [int(p[0]) for p in pts]}


def fit_layers(layers: Sequence[int]) -> list[int]:
    """The layers a growth fit uses: all but layer 0 (the embeddings, on a scale of their own) when three or more
    remain."""
    rest = [i for i in layers if i != 0]
    return rest if len(rest) >= 3 else list(layers)


def probe_accuracy(pos: torch.Tensor, neg: torch.Tensor, *, test_fraction: float = 0.25, seed: int = 0
                   ) -> dict[str, Any]:
    """Held-out accuracy of a logistic-regression probe separating the two sets, both in train and test. Sets of
    equal length are taken as paired (item i of each: the same question with the other answer, or a contrastive
    pair) and split together, so no test item has its partner in training: a probe that memorised the question
    would otherwise score below chance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"xtr": [], "xte": [], "ytr": [], "yte": []}
    joint = rng.permutation(len(pos)) if len(pos) == len(neg) else None
    for x, label in ((pos, 1), (neg, 0)):
        n = len(x)
        n_te = max(1, round(n * test_fraction)) if n >= 2 else 0
        idx = joint if joint is not None else rng.permutation(n)
        arr = x.double().cpu().numpy()
        parts["xte"].append(arr[idx[:n_te]])
        parts["xtr"].append(arr[idx[n_te:]])
        parts["yte"].append(np.full(n_te, label))
        parts["ytr"].append(np.full(n - n_te, label))
    xtr, xte = np.concatenate(parts["xtr"]), np.concatenate(parts["xte"])
    ytr, yte = np.concatenate(parts["ytr"]), np.concatenate(parts["yte"])
    if len(set(ytr.tolist())) < 2 or len(yte) == 0:
        return {"test_accuracy": None, "train_accuracy": None, "n_train": len(ytr), "n_test": len(yte),
                "chance": None}
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(xtr), ytr)
    return {"test_accuracy": float(clf.score(scaler.transform(xte), yte)),
            "train_accuracy": float(clf.score(scaler.transform(xtr), ytr)), "n_train": len(ytr),
            "n_test": len(yte), "chance": float(max(yte.mean(), 1 - yte.mean()))}


def _mean_pair_distance(a: torch.Tensor, b: torch.Tensor | None = None) -> float:
    if b is None:  # distinct pairs within one set
        n = len(a)
        if n < 2:
            return float("nan")
        d = torch.cdist(a, a)
        return float(d.sum() / (n * (n - 1)))
    return float(torch.cdist(a, b).mean())


def distances(pos: torch.Tensor, neg: torch.Tensor) -> dict[str, float]:
    """Mean pairwise Euclidean distances (float64): ``all`` pairs of the pooled items, ``within`` (pairs inside
    each set, pooled) and ``between`` (one item from each set), and ``between / within``."""
    p, n = pos.double(), neg.double()
    pooled = torch.cat([p, n])
    np_, nn_ = len(p), len(n)
    within_pairs = np_ * (np_ - 1) + nn_ * (nn_ - 1)
    within = float((torch.cdist(p, p).sum() + torch.cdist(n, n).sum()) / within_pairs) if within_pairs else math.nan
    between = _mean_pair_distance(p, n)
    return {"all": _mean_pair_distance(pooled), "within": within, "between": between,
            "between_over_within": between / within if within and math.isfinite(within) else math.nan}


def untangling(layers: Sequence[int], pos: Sequence[torch.Tensor], neg: Sequence[torch.Tensor], *,
               test_fraction: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """Per layer (``pos[i]``/``neg[i]`` at ``layers[i]``): probe accuracy, distances and the mean per-feature
    variance of the pooled items; with exponential fits of the distance and the variance over depth."""
    rows = []
    for layer, p, n in zip(layers, pos, neg, strict=True):
        pooled = torch.cat([p, n]).double()
        var = float(pooled.var(dim=0, unbiased=True).mean()) if len(pooled) > 1 else math.nan
        rows.append({"layer": int(layer), **probe_accuracy(p, n, test_fraction=test_fraction, seed=seed),
                     "distance": distances(p, n), "mean_variance": var})
    use = fit_layers(layers)
    pick = [r for r in rows if r["layer"] in use]
    return {"layers": rows, "test_fraction": test_fraction, "seed": seed,
            "distance_growth": exponential_fit([r["layer"] for r in pick], [r["distance"]["all"] for r in pick]),
            "variance_growth": exponential_fit([r["layer"] for r in pick], [r["mean_variance"] for r in pick]),
            "fit": "log y = a + b * layer by least squares; growth = exp(b) per layer; layer 0 left out when three "
                   "or more layers remain"}
