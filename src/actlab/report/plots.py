"""Matplotlib figures written as PNG files (Agg backend, atomic writes)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..runs import write_bytes


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Save a figure as PNG atomically and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def heatmaps(
    matrices: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: str | os.PathLike[str],
    suptitle: str = "",
    cbar_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    annotate: bool = True,
) -> Path:
    """Side-by-side heatmaps sharing a colour scale (rows x cols each)."""
    plt = pyplot()
    n = len(matrices)
    rows, cols = len(row_labels), len(col_labels)
    fig, axes = plt.subplots(1, n, figsize=(max(3.0, 0.9 * cols + 1.8) * n, max(3.0, 0.28 * rows + 1.5)),
                             squeeze=False)
    im = None
    for ax, m, title in zip(axes[0], matrices, titles, strict=True):
        im = ax.imshow(np.asarray(m, dtype=float), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       origin="lower", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks(range(cols), col_labels, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(rows), row_labels, fontsize=7)
        if annotate and rows * cols <= 400:
            for r in range(rows):
                for c in range(cols):
                    v = float(m[r][c])
                    if np.isfinite(v):
                        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if (vmax is None or v < 0.6 * (vmax or 1)) else "black")
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), label=cbar_label, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)
