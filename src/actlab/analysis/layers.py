"""Layer-selection metrics from two contrastive prompt sets, streamed (nothing stored).

Per layer and stream (``resid_pre``, ``resid_mid`` by default): the cosine similarity between the two
class means, and the mean and the max of the per-feature variance of each set (float64 Welford).

Recommendation rule (stated in outputs): rank layers by the separation ``1 - cos(mean_P, mean_N)`` of
the chosen stream, highest first, after excluding layers whose max per-feature variance (either set)
exceeds ``outlier_factor`` x the median over layers (massive-activation layers, where a single feature
dominates the mean) and the first layer (token embeddings carry no contrast beyond the words).

The control-vectors study orders the same three metrics the other way round (:func:`study_order`, reported
beside): first low mean variance (the layers in the lower half), then among those low max variance (the lower
half again), then low cosine between the class means, lowest first; the layers the filters drop follow in
order of cosine. Both rankings are written; the recommendation above stays the default. The mean variance's
growth with depth is fitted as ``exp(a + b * layer)`` per stream (:func:`actlab.analysis.untangling.exponential_fit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError
from ..hooks.points import HookPoint
from ..hooks.stats import stream_stats
from .similarity import cosine

if TYPE_CHECKING:
    from ..models.model import Model

RULE = ("rank layers by 1 - cos(mean_positive, mean_negative) on {stream}, highest first; exclude layer 0 and "
        "layers whose max per-feature variance exceeds {factor:g}x the median over layers")
STUDY_RULE = ("the control-vectors study's order on {stream}: keep the layers with mean variance at or below the "
              "median, of those the ones with max variance at or below their median, then rank by cosine between "
              "the class means, lowest first (the other layers follow by cosine)")


@dataclass
class LayerMetrics:
    streams: list[str]
    layers: list[int]
    cos_means: dict[str, list[float]]
    var_mean: dict[str, dict[str, list[float]]]  # stream -> "positive"/"negative" -> per layer
    var_max: dict[str, dict[str, list[float]]]
    recommended: list[int] = field(default_factory=list)
    rule: str = ""
    positions: str = "last"
    study_ranking: list[int] = field(default_factory=list)
    study_rule: str = ""
    variance_growth: dict[str, Any] = field(default_factory=dict)  # stream -> exponential fit of the mean variance

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def study_order(var_mean: Sequence[float], var_max: Sequence[float], cos: Sequence[float]) -> list[int]:
    """Layers in the control-vectors study's order: low mean variance first (keep the lower half), then low max
    variance (the lower half of those), then low cosine between the class means; the dropped layers follow,
    each group by cosine. Pure: per-layer lists in, layer indices out."""
    n = len(cos)
    if not n == len(var_mean) == len(var_max):
        raise InputError(f"per-layer metrics of different lengths: {len(var_mean)}, {len(var_max)}, {n}")
    layers = list(range(n))
    med = float(torch.tensor(var_mean, dtype=torch.float64).median()) if n else 0.0
    low_mean = [i for i in layers if var_mean[i] <= med]
    med_max = float(torch.tensor([var_max[i] for i in low_mean], dtype=torch.float64).median()) if low_mean else 0.0
    chosen = [i for i in low_mean if var_max[i] <= med_max]
    by_cos = sorted(chosen, key=lambda i: cos[i])
    return by_cos + sorted((i for i in layers if i not in chosen), key=lambda i: cos[i])


def layer_metrics(model: Model, positive: Sequence[str], negative: Sequence[str], *,
                  streams: Sequence[str] = ("resid_pre", "resid_mid"), positions: str = "last",
                  batch_size: int = 16, rank_stream: str | None = None, outlier_factor: float = 10.0,
                  top: int = 5, progress: Callable[[int], None] | None = None,
                  add_special_tokens: bool = True) -> LayerMetrics:
    """Compute the metrics for every layer and stream and recommend layers (see module docstring)."""
    if not positive or not negative:
        raise InputError("both prompt sets need at least one prompt")
    streams = list(streams)
    rank_stream = rank_stream or streams[-1]
    if rank_stream not in streams:
        raise InputError(f"rank stream {rank_stream!r} is not among the streams {streams}")
    pts = [HookPoint(i, s) for s in streams for i in range(model.n_layers)]
    sp = stream_stats(model, positive, pts, positions, batch_size=batch_size, progress=progress,
                      add_special_tokens=add_special_tokens)
    sn = stream_stats(model, negative, pts, positions, batch_size=batch_size, progress=progress,
                      add_special_tokens=add_special_tokens)
    layers = list(range(model.n_layers))
    out = LayerMetrics(streams, layers, {}, {}, {}, positions=positions)
    for s in streams:
        names = [HookPoint(i, s).name for i in layers]
        out.cos_means[s] = [cosine(sp[n].mean, sn[n].mean) for n in names]
        out.var_mean[s] = {"positive": [float(sp[n].var.mean()) for n in names],
                           "negative": [float(sn[n].var.mean()) for n in names]}
        out.var_max[s] = {"positive": [float(sp[n].var.max()) for n in names],
                          "negative": [float(sn[n].var.max()) for n in names]}
    vmax = torch.tensor([max(a, b) for a, b in zip(out.var_max[rank_stream]["positive"],
                                                   out.var_max[rank_stream]["negative"], strict=True)])
    limit = float(vmax.median()) * outlier_factor
    sep = [1 - c for c in out.cos_means[rank_stream]]
    ok = [i for i in layers if i > 0 and float(vmax[i]) <= limit] or layers
    out.recommended = sorted(ok, key=lambda i: -sep[i])[:top]
    out.rule = RULE.format(stream=rank_stream, factor=outlier_factor)
    both = [max(a, b) for a, b in zip(out.var_mean[rank_stream]["positive"], out.var_mean[rank_stream]["negative"],
                                      strict=True)]
    out.study_ranking = study_order(both, vmax.tolist(), out.cos_means[rank_stream])[:top]
    out.study_rule = STUDY_RULE.format(stream=rank_stream)
    from .untangling import exponential_fit, fit_layers

    use = fit_layers(layers)
    for s in streams:  # the study's near-exponential growth of the mean variance with depth, both sets averaged
        mean_var = [(a + b) / 2 for a, b in zip(out.var_mean[s]["positive"], out.var_mean[s]["negative"],
                                                strict=True)]
        out.variance_growth[s] = exponential_fit(use, [mean_var[i] for i in use])
    return out
