"""Figures drawn from analysis results (matplotlib PNG, written atomically): comparisons, sweeps, refusal
candidates, fine-tuning histories."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.divergence import Divergence
from ..analysis.layers import LayerMetrics
from ..analysis.pca import Projection
from ..steering.evaluate import SweepResult, cell_key
from .plots import heatmaps, pyplot, save_figure


def _integer_ticks(axis) -> None:
    """Layer axes show whole layers only."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


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
    _integer_ticks(ax.xaxis)
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
    ev = [f"{100 * e:.0f}%" for e in proj.explained]
    ax.set_xlabel(f"PC1 ({ev[0]} of the variance)" if ev else "PC1")
    ax.set_ylabel(f"PC2 ({ev[1]} of the variance)" if len(ev) > 1 else "PC2")
    ax.set_title(f"{title}\n(vectors {proj.normalisation}); point labels = layer", fontsize=8)
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
    _integer_ticks(axes[2].xaxis)
    for i, layer in enumerate(m.recommended):
        for ax in axes:
            ax.axvline(layer, color="green", lw=0.8, ls=":", label="recommended layer" if i == 0 else None)
    for ax in axes:
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle(title or f"layer-selection metrics (positions={m.positions})", fontsize=9)
    return save_figure(fig, path)


def divergence_plot(div: Divergence, path: str | os.PathLike[str], *, top_k: int = 5, rank_by: str = "layer",
                    title: str = "") -> Path:
    """L2 norm of the parameter difference per layer: the whole layer (black line) and each module group
    (bars), in the same units the JSON and the tables use; the top ``top_k`` layers by ``rank_by`` marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    n = len(div.per_layer)
    groups = sorted(div.per_module.items())
    width = 0.8 / max(len(groups), 1)
    x = np.arange(n)
    for gi, (g, vals) in enumerate(groups):
        ax.bar(x - 0.4 + width * (gi + 0.5), vals, width=width, label=f"{g} parameters",
               color=plt.get_cmap("tab10")(gi))
    ax.plot(x, div.per_layer, color="black", marker=".", lw=1, label="whole layer")
    top = div.top_layers(top_k, rank_by=rank_by)
    ranked = div.ranking(rank_by)
    if top:
        ax.scatter(top, [ranked[i] for i in top], s=80, facecolors="none", edgecolors="red", zorder=3,
                   label=f"top {len(top)} by {rank_by} divergence")
    ax.set_xticks(x, [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("L2 norm of the difference")
    ax.set_title(title or "parameter divergence per layer", fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def sweep_figures(res: SweepResult, out: str | os.PathLike[str], *, title: str = "") -> dict[str, Path]:
    """A layer x multiplier heatmap of p(matching behaviour) and per-layer curves."""
    out = Path(out)
    grid = res.grid().numpy()
    notes = []
    for layer in res.layers:
        row = []
        for m in res.multipliers:
            c = res.cells.get(cell_key(layer, m))
            if c is None:
                row.append("")
                continue
            text = f"{c['p_matching']:.2f}"
            if "p_first" in c:
                text += f"\np({c['first_label']}) {c['p_first']:.2f}\nflip {c['flip_fraction']:.2f}"
                if c.get("collapsed"):
                    text += f"\nCOLLAPSED: {c['majority_label']}"
            row.append(text)
        notes.append(row)
    paths = {"heatmap": heatmaps([grid], [title or "A/B sweep"], row_labels=[str(x) for x in res.layers],
                                 col_labels=[f"{m:g}" for m in res.multipliers], path=out / "sweep_heatmap.png",
                                 vmin=0.0, vmax=1.0, cmap="RdBu_r", cbar_label="p(answer matching behaviour)",
                                 annotations=[notes], xlabel="multiplier", ylabel="layer")}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    marked = False
    for i, layer in enumerate(res.layers):
        ax.plot(res.multipliers, grid[i], marker="o", label=f"layer {layer}")
        bad = [j for j, m in enumerate(res.multipliers) if res.cells.get(cell_key(layer, m), {}).get("collapsed")]
        if bad:
            ax.scatter([res.multipliers[j] for j in bad], [grid[i][j] for j in bad], marker="x", s=60,
                       color="black", zorder=3, label=None if marked else "collapsed: same answer to every question")
            marked = True
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
        _integer_ticks(ax.xaxis)
        ax.axvline(layer, color="red", lw=0.8, ls=":", label=f"selected (layer {layer})")
    axes[0].axhline(base_harmful, color="grey", lw=0.8, ls="--", label="no intervention")
    axes[1].axhline(base_harmless, color="grey", lw=0.8, ls="--", label="no intervention")
    axes[2].axhline(kl_threshold, color="grey", lw=0.8, ls="--", label="KL threshold")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=6)
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
        _integer_ticks(ax.xaxis)
    return save_figure(fig, path)


def prompting_plot(per_layer: Sequence[Mapping], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Per layer: how much of the instruction's effect addition and rotation reproduce (held-out residual error,
    relative to no map) and the KL from the prompted run's next-token distribution."""
    plt = pyplot()
    layers = [r["layer"] for r in per_layer]
    has_kl = "kl_none" in per_layer[0]
    fig, axes = plt.subplots(1, 2 if has_kl else 1, figsize=(11 if has_kl else 6, 3.8), squeeze=False)
    ax = axes[0][0]
    ax.plot(layers, [1.0] * len(layers), color="grey", ls=":", label="no map (= 1)")
    ax.plot(layers, [r["residual_error_add"] for r in per_layer], marker="o", label="addition (x + mean diff.)")
    ax.plot(layers, [r["residual_error_rotate"] for r in per_layer], marker="s", label="rotation (norm kept)")
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out |y - map(x)|^2 / |y - x|^2")
    ax.set_title("residual error of each map", fontsize=9)
    ax.legend(fontsize=7)
    if has_kl:
        ax = axes[0][1]
        for key, label, marker in (("kl_none", "no map", "."), ("kl_add", "addition", "o"),
                                   ("kl_rotate", "rotation", "s")):
            ax.plot(layers, [r[key] for r in per_layer], marker=marker, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("KL(prompted || mapped), next token")
        ax.set_title("next-token KL to the prompted run", fontsize=9)
        ax.legend(fontsize=7)
    for a in axes[0]:
        a.set_xticks(layers if len(layers) <= 16 else layers[:: max(1, len(layers) // 16)])
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def curvature_plot(rows: Sequence[Mapping], path: str | os.PathLike[str], *, metric: str, title: str = "") -> Path:
    """The metric and its second derivative along the steering direction, against the multiplier."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ms = [r["multiplier"] for r in rows]
    axes[0].plot(ms, [r["value"] for r in rows], marker="o")
    axes[0].set_ylabel(metric)
    axes[0].set_title(f"{metric} along the direction", fontsize=9)
    axes[1].plot(ms, [r["second_derivative"] for r in rows], marker="o", color="#c0392b")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_ylabel(f"d^2 {metric} / d m^2")
    axes[1].set_title("curvature (0 everywhere = flat)", fontsize=9)
    for a in axes:
        a.set_xlabel("multiplier m")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def untangling_plot(result: Mapping, path: str | os.PathLike[str]) -> Path:
    """Two panels over depth: the held-out probe accuracy (with chance), and the mean pairwise distance and
    mean variance on a log scale with their exponential fits."""
    plt = pyplot()
    rows = result["layers"]
    layers = [r["layer"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 6), sharex=True)
    a1.plot(layers, [r["test_accuracy"] if r["test_accuracy"] is not None else float("nan") for r in rows],
            marker=".", label="held-out accuracy")
    a1.plot(layers, [r["train_accuracy"] if r["train_accuracy"] is not None else float("nan") for r in rows],
            marker=".", ls="--", alpha=0.6, label="train accuracy")
    chance = [r["chance"] for r in rows if r["chance"] is not None]
    if chance:
        a1.axhline(chance[0], color="grey", lw=0.8, ls=":", label="chance")
    a1.set_ylabel("linear probe accuracy")
    a1.legend(fontsize=7)
    for key, label, fit_key in (("distance", "mean pairwise distance", "distance_growth"),
                                ("mean_variance", "mean feature variance", "variance_growth")):
        ys = [r["distance"]["all"] if key == "distance" else r["mean_variance"] for r in rows]
        line = a2.plot(layers, ys, marker=".", label=label)[0]
        fit = result.get(fit_key)
        if fit:
            xs = fit["layers"]
            a2.plot(xs, [math.exp(fit["intercept"] + fit["log_slope"] * x) for x in xs], ls=":",
                    color=line.get_color(), label=f"fit: x{fit['growth']:.2f} per layer, R2 {fit['r2']:.2f}")
    a2.set_yscale("log")
    a2.set_xlabel("layer")
    a2.legend(fontsize=7)
    _integer_ticks(a2.xaxis)
    fig.suptitle(f"how the layers untangle the two sets ({result.get('stream', '')})", fontsize=9)
    return save_figure(fig, path)


def mix_sweep_plot(result: Mapping, path: str | os.PathLike[str]) -> Path:
    """Per mixing layer: where the mixed-in activation ranks the concept under the logit lens (top), and the
    concept's next-token probability on the prompts with and without the mix (bottom)."""
    plt = pyplot()
    rows = result["layers"]
    layers = [r["layer"] for r in rows]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
    a1.plot(layers, [r["lens_rank"] for r in rows], marker=".")
    a1.set_yscale("log")
    a1.invert_yaxis()
    a1.axhline(result["top_k"], color="grey", lw=0.8, ls=":", label=f"top {result['top_k']}")
    a1.set_ylabel(f"lens rank of {result['concept']['token']!r}")
    a2.plot(layers, [r["concept_prob_mixed"] for r in rows], marker=".", label="mixed")
    a2.plot(layers, [r["concept_prob_unmixed"] for r in rows], ls="--", label="unmixed")
    a2.set_ylabel("p(concept) next token")
    a2.set_xlabel("mixing layer")
    if result.get("recommended_layer") is not None:
        for ax in (a1, a2):
            ax.axvline(result["recommended_layer"], color="green", lw=0.8, ls=":", label="recommended")
    for ax in (a1, a2):
        ax.legend(fontsize=7)
    _integer_ticks(a2.xaxis)
    fig.suptitle(f"mixing {result['source']!r} at {result['point_kind']} x{result['scale']:g}", fontsize=9)
    return save_figure(fig, path)


def dataset_pca_plot(result: Mapping, path: str | os.PathLike[str]) -> Path:
    """One scatter per layer: the two classes' items on their first two principal components."""
    plt = pyplot()
    rows = result["layers"]
    cols = min(4, len(rows))
    nrows = (len(rows) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows, strict=False):
        for key, color, label in (("positive", "#1a9850", "matching / positive"),
                                  ("negative", "#d73027", "not matching / negative")):
            pts = r[key]
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=9, alpha=0.6, color=color, label=label)
        ax.set_title(f"layer {r['layer']}: separation {r['separation']:.2f}", fontsize=8)
        ax.set_xlabel(f"PC1 ({100 * r['explained'][0]:.0f}%)", fontsize=7)
        ax.set_ylabel(f"PC2 ({100 * r['explained'][1]:.0f}%)", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{result['model']}: the dataset's items at {result['stream']} ({result['positions']} token), "
                 "PCA per layer", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def hessian_plot(report: Mapping, path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Leading Hessian eigenvalues and, with a steering vector, each eigenvector's |cosine| to it."""
    plt = pyplot()
    vals = report["eigenvalues"]
    has_cos = "abs_cos_to_vector" in report
    fig, axes = plt.subplots(1, 2 if has_cos else 1, figsize=(10 if has_cos else 5.5, 3.6), squeeze=False)
    idx = list(range(1, len(vals) + 1))
    per_batch = (report.get("per_batch") or {}).get("mean")
    width = 0.4 if per_batch else 0.8
    axes[0][0].bar([i - width / 2 if per_batch else i for i in idx], vals, width=width,
                   color=["#2c7fb8" if v >= 0 else "#f03b20" for v in vals],
                   label="all batches at once" if per_batch else None)
    if per_batch:
        axes[0][0].bar([i + width / 2 for i in idx], per_batch, width=width, color="#9ecae1",
                       label="mean of per-batch eigenvalues")
        axes[0][0].legend(fontsize=7)
    axes[0][0].axhline(0, color="grey", lw=0.8)
    axes[0][0].set_xticks(idx)
    axes[0][0].set_xlabel("eigenvector (leading first)")
    axes[0][0].set_ylabel("eigenvalue")
    what = ("the parameters" if report.get("wrt") == "params" else "a vector added at every position")
    axes[0][0].set_title(f"Hessian of the next-token loss w.r.t. {what}", fontsize=8)
    if has_cos:
        ax = axes[0][1]
        ax.bar(idx, report["abs_cos_to_vector"], color="#756bb1", label="|cos(eigenvector, steering vector)|")
        ax.axhline(report["random_direction_abs_cos"], color="grey", ls="--", label="a random direction")
        ax.set_xticks(idx)
        ax.set_ylim(0, 1)
        ax.set_xlabel("eigenvector")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def patching_heatmaps(results: Mapping[str, Any], out: str | os.PathLike[str], *, title: str = "") -> list[Path]:
    """One figure per method: a heatmap per kind of the normalised patching effect (0 = corrupted run,
    1 = clean run), layers down, positions (tokens) or heads across, on one diverging colour scale."""
    plt = pyplot()
    paths = []
    for method, res in results.items():
        kinds = list(res.grids)
        n = len(kinds)
        x_labels = ([visible_token(t) for t in res.tokens] if res.axis == "position"
                    else [str(h) for h in range(next(iter(res.grids.values())).shape[1])])
        width = max(3.2, 0.45 * len(x_labels) + 1.6) * n
        fig, axes = plt.subplots(1, n, figsize=(width, 0.32 * len(res.layers) + 1.8), squeeze=False)
        lim = max(1.0, max(float(np.nanmax(np.abs(res.normalised(k).numpy()))) for k in kinds))
        for ax, k in zip(axes[0], kinds, strict=True):
            im = ax.imshow(res.normalised(k).numpy(), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto",
                           origin="lower")
            ax.set_xticks(range(len(x_labels)), x_labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(res.layers)), [str(i) for i in res.layers], fontsize=7)
            ax.set_xlabel("position (token)" if res.axis == "position" else "head")
            ax.set_ylabel("layer")
            ax.set_title(k, fontsize=9)
        fig.colorbar(im, ax=axes[0].tolist(), label="effect (0 = corrupted, 1 = clean)", shrink=0.8)
        fig.suptitle(f"{title}: {method} patching" if title else f"{method} patching", fontsize=10)
        paths.append(save_figure(fig, Path(out) / f"patching_{method}.png"))
    return paths


def visible_token(t: str) -> str:
    """A token label with its leading space shown (matplotlib drops it)."""
    return t.replace(" ", "\u2423").replace("\n", "\u21b5") or "\u2205"


def tuned_lens_plot(result: Mapping[str, Any], path: str | os.PathLike[str], *, title: str = "") -> Path:
    """Per layer, KL to the final distribution (log scale) and next-token cross-entropy, logit lens vs tuned
    lens, on held-out text; the model's own cross-entropy as a dashed line."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    layers = result["layers"]
    for key, label, style in (("logit", "logit lens", "o-"), ("tuned", "tuned lens", "s-")):
        a.plot(layers, result["kl"][key], style, ms=3, label=label)
        b.plot(layers, result["cross_entropy"][key], style, ms=3, label=label)
    b.axhline(result["final_cross_entropy"], color="black", ls="--", lw=1, label="the model's output")
    a.set_yscale("log")
    for ax, name in ((a, "KL(final || lens), nats"), (b, "next-token cross-entropy, nats")):
        ax.set_xlabel("layer (the residual stream entering it)")
        ax.set_ylabel(name)
        _integer_ticks(ax.xaxis)
        ax.legend(fontsize=7)
    fig.suptitle(title or "tuned lens vs logit lens (held-out text)", fontsize=10)
    return save_figure(fig, path)
