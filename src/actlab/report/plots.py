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
    annotations: Sequence[Sequence[Sequence[str]]] | None = None,
    xlabel: str = "",
    ylabel: str = "",
) -> Path:
    """Side-by-side heatmaps sharing a colour scale (rows x cols each). Cells are annotated with their value
    (or with ``annotations[panel][row][col]``), in black or white by the cell colour's luminance."""
    plt = pyplot()
    n = len(matrices)
    rows, cols = len(row_labels), len(col_labels)
    row_h = 0.28 if rows <= 16 else 0.19  # tall stacks of layers stay within a screen
    fig, axes = plt.subplots(1, n, figsize=(max(3.0, 0.9 * cols + 1.8) * n, max(3.0, row_h * rows + 1.5)),
                             squeeze=False)
    im = None
    for k, (ax, m, title) in enumerate(zip(axes[0], matrices, titles, strict=True)):
        im = ax.imshow(np.asarray(m, dtype=float), aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                       origin="lower", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        long = max((len(c) for c in col_labels), default=0) > 4
        ax.set_xticks(range(cols), col_labels, rotation=30 if long else 0, ha="right" if long else "center",
                      fontsize=8)
        ax.set_yticks(range(rows), row_labels, fontsize=7)
        if xlabel:
            ax.set_xlabel(xlabel, fontsize=8)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=8)
        if annotate and rows * cols <= 400:
            for r in range(rows):
                for c in range(cols):
                    v = float(m[r][c])
                    text = annotations[k][r][c] if annotations is not None else (f"{v:.2f}" if np.isfinite(v)
                                                                                   else "")
                    if text:
                        rgb = im.cmap(im.norm(v))[:3] if np.isfinite(v) else (1.0, 1.0, 1.0)
                        lum = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
                        ax.text(c, r, text, ha="center", va="center", fontsize=6,
                                color="black" if lum > 0.5 else "white")
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), label=cbar_label, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    return save_figure(fig, path)
