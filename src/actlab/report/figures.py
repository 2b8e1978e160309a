"""Figures drawn from analysis results (matplotlib PNG, written atomically): comparisons, sweeps, refusal
candidates, fine-tuning histories."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..analysis.divergence import Divergence
from ..analysis.layers import LayerMetrics
from ..analysis.pca import Projection
from ..steering.evaluate import SweepResult
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


def sweep_figures(res: SweepResult, out: str | os.PathLike[str], *, title: str = "") -> dict[str, Path]:
    """A layer x multiplier heatmap of p(matching behaviour) and per-layer curves."""
    out = Path(out)
    grid = res.grid().numpy()
    paths = {"heatmap": heatmaps([grid], [title or "A/B sweep"], row_labels=[str(x) for x in res.layers],
                                 col_labels=[f"{m:g}" for m in res.multipliers], path=out / "sweep_heatmap.png",
                                 vmin=0.0, vmax=1.0, cmap="RdBu_r", cbar_label="p(answer matching behaviour)")}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, layer in enumerate(res.layers):
        ax.plot(res.multipliers, grid[i], marker="o", label=f"layer {layer}")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("multiplier")
    ax.set_ylabel("p(answer matching behaviour)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "A/B sweep", fontsize=9)
    paths["curves"] = save_figure(fig, out / "sweep_curves.png")
    return paths


def refusal_scores(candidates: Sequence[Mapping], *, layer: int, base_harmful: float, base_harmless: float,
                   kl_threshold: float, path: str | os.PathLike[str]) -> Path:
    """Bypass, induce and KL scores of every refusal-direction candidate per layer (one line per eoi position)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    positions = sorted({r["eoi_position"] for r in candidates})
    for ax, key, label in zip(axes, ("bypass", "induce", "kl"),
                              ("refusal score, harmful, ablated (lower = bypass)",
                               "refusal score, harmless, added (higher = induce)", "KL on harmless, ablated"),
                              strict=True):
        for pos in positions:
            rs = [r for r in candidates if r["eoi_position"] == pos and r[key] is not None]
            ax.plot([r["layer"] for r in rs], [r[key] for r in rs], marker=".", label=f"eoi {pos}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("layer")
        ax.axvline(layer, color="red", lw=0.8, ls=":")
    axes[0].axhline(base_harmful, color="grey", lw=0.8, ls="--")
    axes[1].axhline(base_harmless, color="grey", lw=0.8, ls="--")
    axes[2].axhline(kl_threshold, color="grey", lw=0.8, ls="--")
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def training_history(hist: Sequence[Mapping], keys: Sequence[str], path: str | os.PathLike[str]) -> Path:
    """One panel per logged quantity (reward, KL, preference accuracy...) over fine-tuning steps."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys, strict=True):
        pts = [(h["step"], h[k]) for h in hist if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step")
    return save_figure(fig, path)
