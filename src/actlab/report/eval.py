"""The evaluation's offline page (``index.html`` in its run folder) and its section in ``actlab report``: the
leaderboard first, then per behaviour the validation curves of every method on one figure, the KL side-effect
curves, the steerability histogram and the test generations side by side. Every value from the run is checked
as a number or escaped."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .html import Page, count, esc, num
from .plots import pyplot, save_figure
from .sections import Context, details, how, warn

HOW = ("Each method's cell (layer, strength) was chosen on the validation split: the largest effect on "
       "p(answer matching the behaviour) against the unsteered model, among cells whose next-token KL on neutral "
       "text stays within the limit. Every number in this table is from the test split unless its name says "
       "validation. p is letter-balanced (each item in both letter orders); the interval is a 95% bootstrap over "
       "items; p(first) is the mean probability of the first letter (0.5 when the answers follow the content). "
       "Steerability: mean per-item slope of the log-probability difference against the multiplier (Tan et al. "
       "2024) and the share of items whose slope is <= 0 (anti-steerable).")


def _f(x: Any, spec: str = ".3f") -> str:
    return "" if x is None else num(x, spec)


def _interval(r: Mapping[str, Any], key: str) -> str:
    if r.get(key) is None:
        return ""
    lo, hi = r.get(f"{key}_low"), r.get(f"{key}_high")
    return f"{_f(r[key])} [{_f(lo)}, {_f(hi)}]" if lo is not None and hi is not None else _f(r[key])


def leaderboard_table(page: Page, board: Mapping[str, Any]) -> None:
    """The leaderboard rows, one per (behaviour, method), the unsteered baseline first in each behaviour."""
    rows = []
    for r in board.get("rows", []):
        if not isinstance(r, Mapping):
            continue
        strength = "" if r.get("strength") is None else num(r["strength"], "g")
        rows.append([esc(r.get("behaviour", "")), esc(r.get("method", "")),
                     "" if r.get("layer") is None else str(count(r["layer"], "layer")), strength,
                     esc(_interval(r, "test_p")), esc(_interval(r, "test_effect") or _interval(r, "open_effect")),
                     _f(r.get("validation_effect")), _f(r.get("kl")) + ("" if r.get("within_kl_limit", True)
                                                                         else " (over limit)"),
                     _f(r.get("test_p_first"), ".2f"), _f(r.get("steerability_mean_slope")),
                     _f(r.get("anti_steerable_fraction"), ".2f"), _f(r.get("open_score")),
                     _f(r.get("open_perplexity"), ".1f"), _f(r.get("open_repetition"), ".2f"),
                     _f(r.get("judge_behaviour"), ".2f"), _f(r.get("judge_axbench_hm"), ".2f"),
                     _f(r.get("capability_accuracy"), ".2f")])
    page.table(["behaviour", "method", "layer", "strength", "test p [95% CI]", "test effect [95% CI]",
                "validation effect", "KL (nats)", "p(first)", "steer slope", "anti-steerable", "open score",
                "perplexity", "repetition", "judge 0-10", "AxBench HM", "capability"], rows, raw_cells=True)


def _curves(name: str, cells: Sequence[Mapping[str, Any]], out: Path) -> Path | None:
    """Validation p(matching) (or score) and KL against strength, per method at its layers."""
    plt = pyplot()
    mult = [c for c in cells if isinstance(c.get("strength"), (int, float)) and c.get("method") != "rotation"]
    ang = [c for c in cells if c.get("method") == "rotation"]
    flat = [c for c in cells if c.get("strength") is None]
    if not mult and not ang:
        return None
    fig, axes = plt.subplots(2, 2 if ang else 1, figsize=(11 if ang else 6.5, 7), squeeze=False)
    for col, group, xlabel in ((0, mult, "multiplier"), (1, ang, "angle (degrees)")):
        if col >= axes.shape[1]:
            continue
        series: dict[str, list[tuple[float, float, float]]] = {}
        for c in group:
            key = f"{c['method']} L{c.get('layer')}"
            series.setdefault(key, []).append((float(c["strength"]), c.get("p") or math.nan, c.get("kl") or math.nan))
        for key, pts in sorted(series.items()):
            pts.sort()
            axes[0, col].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=key)
            axes[1, col].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", ms=3, label=key)
        for c in flat:
            if isinstance(c.get("p"), (int, float)):
                axes[0, col].axhline(float(c["p"]), ls="--" if c["method"] != "baseline" else ":", lw=1,
                                     color="grey" if c["method"] == "baseline" else None, label=c["method"])
        axes[0, col].set_ylabel("validation p(matching) / score")
        axes[1, col].set_ylabel("KL on neutral text (nats)")
        axes[1, col].set_xlabel(xlabel)
        axes[0, col].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{name}: validation split", fontsize=10)
    return save_figure(fig, out / f"curves_{name}.png")


def _slopes(name: str, rows: Sequence[Mapping[str, Any]], out: Path) -> Path | None:
    plt = pyplot()
    have = [r for r in rows if r.get("behaviour") == name and isinstance(r.get("steerability_slopes"), list)]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for r in have:
        ax.hist([float(s) for s in r["steerability_slopes"] if isinstance(s, (int, float))], bins=20, alpha=0.5,
                label=f"{r['method']} L{r.get('layer')}")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("per-item slope of log p(matching) - log p(other) vs multiplier (test split)")
    ax.set_ylabel("items")
    ax.legend(fontsize=7)
    return save_figure(fig, out / f"steerability_{name}.png")


def _samples(page: Page, samples: Sequence[Mapping[str, Any]], limit: int = 4) -> None:
    if not samples:
        return
    first = samples[0].get("outputs")
    cols = [str(k) for k in first] if isinstance(first, Mapping) else []
    rows = []
    for s in samples[:limit]:
        outs = s.get("outputs") if isinstance(s.get("outputs"), Mapping) else {}
        rows.append([esc(s.get("input", "")), *(esc(outs.get(c, "")) for c in cols)])
    page.table(["prompt", *cols], rows, raw_cells=True)


def eval_page(board: Mapping[str, Any], samples: Mapping[str, Sequence[Mapping[str, Any]]],
              out: str | os.PathLike[str]) -> Path:
    """Write ``figures/*.png`` and ``index.html`` in an evaluation's run folder."""
    out = Path(out)
    figs = out / "figures"
    page = Page(f"actlab eval: {board.get('model', '')}",
                f"behaviours: {', '.join(map(str, board.get('behaviours', [])))}; methods: "
                f"{', '.join(map(str, board.get('methods', [])))}")
    page.section("Leaderboard", "leaderboard")
    how(page, HOW)
    for w in board.get("warnings", []):
        warn(page, str(w))
    leaderboard_table(page, board)
    for note in board.get("notes", []):
        page.text(str(note), muted=True)
    for name in board.get("behaviours", []):
        page.section(str(name))
        cells = board.get("curves", {}).get(name, [])
        p = _curves(str(name), cells, figs)
        if p is not None:
            page.image(p, p.name)
        s = _slopes(str(name), board.get("rows", []), figs)
        if s is not None:
            page.image(s, s.name)
        if samples.get(name):
            page.heading("Test generations (greedy), each method at its chosen cell")
            _samples(page, samples[name])
    return page.write(out / "index.html")


def leaderboard_section(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    """``leaderboard.json`` in ``actlab report``: the table, its warnings, the raw file folded."""
    how(page, HOW)
    for w in obj.get("warnings", []):
        warn(page, str(w))
    leaderboard_table(page, obj)
    details(page, obj, ctx.path.name)
