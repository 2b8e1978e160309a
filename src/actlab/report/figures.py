"""Figures for the comparison analyses (matplotlib PNG, written atomically)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..analysis.divergence import Divergence
from ..analysis.layers import LayerMetrics
from ..analysis.pca import Projection
from .plots import heatmaps, pyplot, save_figure


def layer_cosine_heatmap(matrix: np.ndarray, layers: Sequence[int], title: str, path: str | os.PathLike[str]) -> Path:
    labels = [str(x) for x in layers]
    return heatmaps([np.asarray(matrix)], [title], row_labels=labels, col_labels=labels, path=path, vmin=-1.0,
                    vmax=1.0, cmap="RdBu_r", cbar_label="cosine similarity", annotate=len(layers) <= 16)


def cross_model_plot(results: Mapping[str, Mapping[int, float]], path: str | os.PathLike[str], *,
                     title: str = "cosine similarity of the two models' vectors per layer") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, per_layer in results.items():
        ks = sorted(per_layer)
        ax.plot(ks, [per_layer[k] for k in ks], marker="o", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("cosine similarity")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def pca_plot(proj: Projection, path: str | os.PathLike[str], *, title: str = "PCA of steering vectors") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    groups = list(dict.fromkeys(proj.labels))
    cmap = plt.get_cmap("tab10")
    xy = proj.coords.numpy()
    for gi, g in enumerate(groups):
        idx = [i for i, lab in enumerate(proj.labels) if lab == g]
        ax.scatter(xy[idx, 0], xy[idx, 1], color=cmap(gi % 10), label=g, s=28)
        for i in idx:
            ax.annotate(str(proj.layers[i]), (xy[i, 0], xy[i, 1]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ev = ", ".join(f"{100 * e:.0f}%" for e in proj.explained)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(f"{title}\n({proj.normalisation}; explained variance {ev}); labels = layer", fontsize=8)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def layer_metrics_plot(m: LayerMetrics, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Three stacked panels: cosine of class means, mean per-feature variance, max per-feature variance."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(7.5, 8), sharex=True)
    for s in m.streams:
        axes[0].plot(m.layers, m.cos_means[s], marker=".", label=s)
        for cls, ls in (("positive", "-"), ("negative", "--")):
            axes[1].plot(m.layers, m.var_mean[s][cls], ls=ls, marker=".", label=f"{s} {cls}")
            axes[2].plot(m.layers, m.var_max[s][cls], ls=ls, marker=".", label=f"{s} {cls}")
    axes[0].set_ylabel("cos(mean P, mean N)")
    axes[1].set_ylabel("mean feature variance")
    axes[2].set_ylabel("max feature variance")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("layer")
    for layer in m.recommended:
        for ax in axes:
            ax.axvline(layer, color="green", lw=0.6, ls=":")
    for ax in axes:
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title or f"layer-selection metrics (positions={m.positions}); green: recommended", fontsize=9)
    return save_figure(fig, path)


def divergence_plot(div: Divergence, path: str | os.PathLike[str], *, top_k: int = 5, title: str = "") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    n = len(div.per_layer)
    top = set(div.top_layers(top_k))
    bottom = np.zeros(n)
    for gi, (g, vals) in enumerate(sorted(div.per_module.items())):
        sq = np.asarray(vals) ** 2  # stack squared norms so bars add up to the layer's squared norm
        ax.bar(range(n), sq, bottom=bottom, label=g, color=pyplot().get_cmap("tab10")(gi))
        bottom += sq
    for i in top:
        ax.annotate("top", (i, bottom[i]), ha="center", fontsize=7, color="red")
    ax.set_xlabel("layer")
    ax.set_ylabel("squared L2 norm of the difference")
    ax.set_title(title or f"parameter divergence per layer (top {top_k} marked)", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
