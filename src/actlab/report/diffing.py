"""Figures and the report section of a crosscoder run: the histogram of relative decoder norms (the figure
Lindsey et al. and Minder et al. both show), the latent-scaling scatter of the model-specific latents, and the
class counts with their thresholds."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .html import Page, count, esc, num
from .plots import pyplot, save_figure
from .sections import Context, details, how, warn

HOW = ("Each latent of the crosscoder decodes into both models; its relative norm difference is 0 when it decodes "
       "only into the base model, 1 only into the tuned model, 0.5 equally (Minder et al. 2025). Latent scaling: "
       "nu_eps near 0 means the base model's reconstruction error does not carry the latent (it is really "
       "tuned-only); near 1, the base model has it too and the crosscoder merely shrank it away.")


def crosscoder_figures(result: Mapping[str, Any], out: str | os.PathLike[str]) -> dict[str, Path]:
    plt = pyplot()
    out = Path(out)
    th = result["thresholds"]
    live = [x for x in result["latents"] if x["class"] != "dead"]
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.hist([x["delta"] for x in live], bins=50, range=(0, 1), color="#4a7ab5")
    for v in (th["base_only"], th["tuned_only"], th["shared_low"], th["shared_high"]):
        ax.axvline(v, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("relative decoder norm difference (0: base only, 1: tuned only)")
    ax.set_ylabel("latents")
    ax.set_yscale("log")
    paths = {"norms": save_figure(fig, out / "crosscoder_norms.png")}
    # latents with a scaling: the model-specific ones and "other" (leaning one way, not past the cut)
    pts = [(x["scaling"]["nu_eps"], x["scaling"]["nu_r"], x["class"]) for x in result["latents"]
           if isinstance(x.get("scaling"), Mapping) and x["scaling"].get("nu_eps") is not None
           and x["scaling"].get("nu_r") is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(5, 4))
        for cls, color in (("tuned-only", "#c0392b"), ("base-only", "#2c7a3f"), ("other", "#7f8c8d")):
            sel = [(a, b) for a, b, c in pts if c == cls or (cls == "other" and c not in ("tuned-only", "base-only"))]
            if sel:
                ax.scatter([a for a, _ in sel], [b for _, b in sel], s=12, alpha=0.7, color=color, label=cls)
        ax.set_xlabel("nu_eps (error ratio)")
        ax.set_ylabel("nu_r (reconstruction ratio)")
        ax.axhline(0, color="grey", lw=0.6)
        ax.axvline(0, color="grey", lw=0.6)
        ax.legend(fontsize=7)
        paths["scaling"] = save_figure(fig, out / "crosscoder_scaling.png")
    return paths


def crosscoder_section(page: Page, obj: Mapping[str, Any], ctx: Context) -> None:
    """``latents.json`` in ``actlab report``."""
    ctx.figure(page, "crosscoder_norms.png")
    ctx.figure(page, "crosscoder_scaling.png")
    how(page, HOW)
    s = obj["summary"]
    cls = s["classes"]
    page.table(["class", "latents"], [[esc(k), count(v, k)] for k, v in cls.items()])
    ev = ", ".join(num(v, ".3f") for v in s["explained_variance"])
    page.text(f"explained variance per model (base, tuned): {ev}; L0 {num(s['l0'], '.3g')}; dead "
              f"{100 * num_f(s['dead_fraction']):.1f}%", muted=True)
    if num_f(s["dead_fraction"]) > 0.5:
        warn(page, "more than half of the latents never fired on the held-out tokens: train longer or lower k")
    band = obj.get("thresholds", {})
    low, high = num_f(band.get("shared_low", 0.4)), num_f(band.get("shared_high", 0.6))
    specific = sorted((x for x in obj["latents"] if x.get("class") != "dead"
                       and not low <= num_f(x.get("delta", 0.5)) <= high),
                      key=lambda x: -abs(num_f(x.get("delta", 0.5)) - 0.5))[:12]  # the most one-sided first
    if specific:
        page.table(["latent", "class", "delta", "frequency", "nu_eps", "nu_r"],
                   [[count(x["latent"], "latent"), esc(x["class"]), num(x["delta"], ".3f"),
                     num(x["frequency"], ".3g"),
                     num(x["scaling"]["nu_eps"], ".3g") if x.get("scaling", {}).get("nu_eps") is not None else "",
                     num(x["scaling"]["nu_r"], ".3g") if x.get("scaling", {}).get("nu_r") is not None else ""]
                    for x in specific], raw_cells=True)
    details(page, {k: v for k, v in obj.items() if k != "latents"}, ctx.path.name)


def num_f(x: Any) -> float:
    from .html import number

    return number(x)
