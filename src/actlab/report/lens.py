"""Rendering logit-lens results: a target-probability heatmap (layers x points) and HTML tables."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..hooks.points import HookPoint
from ..lens import LensResult
from .html import Page, esc, tok
from .plots import heatmaps


def _grid(result: LensResult, prompt: int, values) -> tuple[np.ndarray, list[str], list[str]]:
    kinds = [k for k in result.kinds if k not in ("embed", "final_norm")]
    layers = sorted({p.layer for p in result.points if p.layer is not None})
    grid = np.full((len(layers), len(kinds)), np.nan)
    for j, p in enumerate(result.points):
        if p.layer is not None and p.kind in kinds:
            grid[layers.index(p.layer), kinds.index(p.kind)] = float(values[prompt, j])
    return grid, [str(i) for i in layers], kinds


def target_heatmap(result: LensResult, path: str | os.PathLike[str]) -> Path:
    """One panel per prompt: log10 p(target) at each layer (rows) and point kind (columns), each cell labelled
    with the target's rank. A log scale because the answer typically rises from p ~1e-5 to ~0.5 within the
    last few layers: on a linear scale every earlier row reads 0.00 and where it emerges is invisible."""
    if result.target_probs is None:
        raise ValueError("the lens result has no target token")
    mats, titles, notes = [], [], []
    rows: list[str] = []
    cols: list[str] = []
    for b, prompt in enumerate(result.prompts):
        grid, rows, cols = _grid(result, b, result.target_probs)
        mats.append(np.log10(np.clip(grid, 1e-12, 1.0)))
        if result.target_ranks is not None:
            ranks, _, _ = _grid(result, b, result.target_ranks)
            notes.append([[f"#{int(r)}" if np.isfinite(r) else "" for r in row] for row in ranks])
        short = prompt if len(prompt) <= 40 else prompt[:37] + "..."
        titles.append(short)
    floor = float(np.floor(min(np.nanmin(m) for m in mats))) if mats else -6.0
    return heatmaps(mats, titles, row_labels=rows, col_labels=cols, path=path, vmin=max(floor, -8.0), vmax=0.0,
                    suptitle=f"logit lens: p({result.target_token!r}) per layer and point ({result.model}); "
                             "cell text: the target's rank (#1 = top token)",
                    cbar_label="log10 p(target)", annotations=notes or None, xlabel="hook point",
                    ylabel="layer")


def lens_tables(page: Page, result: LensResult, *, top_k: int = 3, folded: bool = True) -> Page:
    """Per prompt: a layer x point table of the top tokens (and the target's probability and rank), folded in
    ``<details>`` by default (the heatmap is the summary; the tables are for looking things up)."""
    for b, prompt in enumerate(result.prompts):
        if folded:
            page.html(f"<details><summary>top-{top_k} tokens per layer and point: {esc(prompt)}</summary>")
        else:
            page.heading(f"Prompt: {prompt}")
        page.text(f"Position {result.position} (token {result.position_tokens[b]!r}); the model itself "
                  f"predicts {result.final_top_tokens[b]!r} there.", muted=True)
        kinds = result.kinds
        layers: list[int | None] = []
        for p in result.points:
            if p.layer not in layers:
                layers.append(p.layer)
        rows = []
        for layer in layers:
            cells = ["-" if layer is None else str(layer)]
            for kind in kinds:
                try:
                    j = result.index(HookPoint(layer, kind))
                except KeyError:
                    cells.append("")
                    continue
                toks = ", ".join(f"{tok(result.top_tokens[b][j][r])} {float(result.top_probs[b, j, r]):.2f}"
                                 for r in range(min(top_k, result.top_ids.shape[-1])))
                if result.target_probs is not None and result.target_ranks is not None:
                    toks += (f"<br><span class=\"muted\">p(target)={float(result.target_probs[b, j]):.3f}, "
                             f"rank {int(result.target_ranks[b, j])}</span>")
                cells.append(toks)
            rows.append([esc(cells[0]), *cells[1:]])
        page.table(["layer", *kinds], rows, raw_cells=True)
        if folded:
            page.html("</details>")
    return page
