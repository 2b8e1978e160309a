"""SAE outputs: metrics tables, training curves, density histograms, overlap, and a top-examples HTML page."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .html import Page, count, esc, num, number
from .plots import pyplot, save_figure


def training_curves(log_path: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path | None:
    """MSE, L0 and dead fraction over steps for every dictionary in a ``train_log.jsonl``."""
    p = Path(log_path)
    if not p.is_file():
        return None
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    names = [k for k, v in rows[0].items() if isinstance(v, dict)]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for n in names:
        steps = [r["step"] for r in rows]
        for ax, key in zip(axes, ("mse", "l0", "dead"), strict=True):
            ax.plot(steps, [r[n][key] for r in rows], label=n)
    for ax, title in zip(axes, ("MSE", "L0 (active features per token)", "dead fraction"), strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def density_histogram(metrics: Mapping[str, Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """log10 feature density per dictionary (dead features shown at the left edge)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, m in metrics.items():
        vals = [math.log10(d) if d > 0 else -7.0 for d in m["density"]]
        ax.hist(vals, bins=40, alpha=0.5, label=name)
    ax.set_xlabel("log10 feature density (dead at -7)")
    ax.set_ylabel("features")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def top_examples_page(examples: Mapping[int, list[dict[str, Any]]], path: str | os.PathLike[str], *,
                      title: str) -> Path:
    """An offline page: for each feature, its top contexts with the activating token highlighted."""
    page = Page(title)
    for f, rows in examples.items():
        page.heading(f"feature {f}")
        if not rows:
            page.text("never active on these texts", muted=True)
            continue
        top = max(number(r["value"]) for r in rows) or 1.0
        for r in rows:
            spans = []
            h = count(r["highlight"], "highlight")
            for j, t in enumerate(r["tokens"]):
                shown = esc(str(t).replace("\n", "\\n"))
                if j == h:
                    a = min(number(r["value"]) / top, 1.0)
                    spans.append(f'<mark style="background:rgba(255,140,0,{0.25 + 0.75 * a:.2f})">{shown}</mark>')
                else:
                    spans.append(shown)
            page.html(f'<p><code>{num(r["value"], ".3f")}</code> {"".join(spans)}</p>')
    return page.write(path)


def render_top_examples(page: Page, obj: Mapping[str, Any]) -> None:
    """Report renderer for ``top_examples.json``."""
    for f, rows in list(obj.get("features", {}).items())[:64]:
        parts = []
        for r in rows[:5]:
            toks = [esc(t) for t in r["tokens"]]
            h = count(r["highlight"], "highlight")
            if 0 <= h < len(toks):
                toks[h] = f"<mark>{toks[h]}</mark>"
            parts.append(f"<li><code>{num(r['value'], '.3f')}</code> {''.join(toks)}</li>")
        page.html(f"<h3>feature {esc(f)}</h3><ul>{''.join(parts)}</ul>")
