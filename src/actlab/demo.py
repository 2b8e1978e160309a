"""``actlab demo``: the tour of what actlab does, on a real model, written to a report folder.

Sections: (1) the logit lens on factual prompts - JSON, a PNG heatmap of the target token's probability
per layer and point; (2) steering - a sentiment vector from contrastive story openings steers story
generation, scored by VADER at multipliers -m, 0, +m. Everything lands in one offline HTML page.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .hooks.points import HookPoint
from .lens import logit_lens
from .models import Model, load_model
from .progress import info as progress_info
from .report import Page
from .report.lens import lens_tables, target_heatmap
from .runs import Run, write_json

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

FACT_PROMPTS: list[tuple[str, str]] = [
    ("The capital of France is", " Paris"),
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("The largest planet in our solar system is", " Jupiter"),
    ("Water is made of hydrogen and", " oxygen"),
]
LENS_POINTS = "resid_pre,attn_out,mlp_out,resid_post"  # a point spec: these kinds at every layer


def lens_section(model: Model, out: Path, page: Page, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the lens on each factual prompt; write lens.json and one heatmap per target."""
    page.section("Logit lens on factual prompts", "lens")
    page.text("Each point is decoded through the model's own final norm (recomputed for that vector) and "
              "unembedding. attn_out and mlp_out are decoded on their own (what the sub-block writes); "
              "resid_pre/resid_post show the cumulative residual stream.")
    results = []
    by_target: dict[str, list[str]] = {}
    for prompt, target in FACT_PROMPTS:
        by_target.setdefault(target, []).append(prompt)
    summary = []
    for target, prompts in by_target.items():
        res = logit_lens(model, prompts, points=LENS_POINTS, position=-1, top_k=5, target=target)
        results.append(res.to_dict())
        png = target_heatmap(res, out / f"lens_{target.strip().lower()}.png")
        page.image(png, f"p({target!r}) per layer and point")
        lens_tables(page, res)
        last = res.index(HookPoint(model.n_layers - 1, "resid_post"))
        for b, prompt in enumerate(prompts):
            post = [j for j, p in enumerate(res.points) if p.kind == "resid_post"]
            first = next((res.points[j].layer for j in post if int(res.target_ranks[b, j]) == 1), None)  # type: ignore[index]
            row = {"prompt": prompt, "target": target, "final_prob": float(res.target_probs[b, last]),  # type: ignore[index]
                   "model_prediction": res.final_top_tokens[b], "first_layer_top1": first}
            summary.append(row)
            log(f"  {prompt!r} -> {res.final_top_tokens[b]!r}; p({target!r}) at the last layer "
                f"{row['final_prob']:.3f}, " + (f"top-1 from layer {first}" if first is not None
                                                 else "never the top-1 token at any layer"))
    write_json(out / "lens.json", {"results": results, "summary": summary})
    page.heading("Summary")
    page.table(["prompt", "target", "p(target), last layer", "model predicts", "first layer where top-1"],
               [[r["prompt"], r["target"], r["final_prob"], r["model_prediction"],
                 "-" if r["first_layer_top1"] is None else str(r["first_layer_top1"])] for r in summary])
    return {"lens": summary}


STORY_PROMPTS = ["Once upon a time", "The day began", "My neighbour is", "I went to the park and",
                 "The weather today", "When I opened the door,"]


def steering_section(model: Model, out: Path, page: Page, log: Callable[[str], None], *,
                     multiplier: float = 4.0, layer: int | None = None) -> dict[str, Any]:
    """A sentiment vector from contrastive story openings steers story generation; VADER scores -m, 0, +m."""
    from .analysis.vocab import vocab_view
    from .data import path as data_path
    from .report.plots import pyplot, save_figure
    from .steering import contrast_from_pairs, extract, load_pairs
    from .steering.evaluate import score_generations, steered_generations
    from .steering.prompts import PromptStyle
    from .steering.scorers import VaderScorer

    page.section("Steering: a sentiment vector", "steering")
    pairs = load_pairs(data_path("sentiment_pairs.jsonl"))
    layer = round(0.2 * model.n_layers) if layer is None else layer
    data = contrast_from_pairs(model, pairs, PromptStyle(chat=False), policy="mean")
    vec = extract(model, data, layers=[layer], point="resid_post", method="mean_diff")
    vec.save(out / "sentiment_vector.safetensors")
    log(f"  extracted a mean-difference vector from {len(pairs)} positive/negative story openings at "
        f"blocks.{layer}.resid_post (norm {vec.norms()[layer]:.2f})")
    mults = [-multiplier, 0.0, multiplier]
    rows = steered_generations(model, STORY_PROMPTS, vec, layers=[layer], multipliers=mults,
                               style=PromptStyle(chat=False), positions="all", max_new_tokens=32)
    means = score_generations(rows, VaderScorer())
    for mu in mults:
        log(f"  multiplier {mu:+g}: mean VADER compound {means[mu]:+.3f}")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar([f"{mu:+g}" for mu in mults], [means[mu] for mu in mults], color=["#c0392b", "#7f8c8d", "#27ae60"])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel(f"multiplier at blocks.{layer}.resid_post")
    ax.set_ylabel("mean VADER compound")
    ax.set_ylim(-1, 1)
    ax.set_title(f"sentiment steering ({len(STORY_PROMPTS)} prompts, greedy)", fontsize=9)
    png = save_figure(fig, out / "steering_vader.png")
    vocab = vocab_view(model, vec, layer, k=8)
    summary = {"layer": layer, "point": "resid_post", "multipliers": mults,
               "mean_vader": {f"{mu:g}": means[mu] for mu in mults},
               "monotonic": means[mults[0]] < means[0.0] < means[mults[2]], "generations": rows,
               "vocab": vocab}
    write_json(out / "steering.json", summary)
    page.text(f"Mean-difference vector of {len(pairs)} positive vs negative story openings (mean over tokens) at "
              f"blocks.{layer}.resid_post, added at every position with multipliers {mults}. Generations are "
              "greedy, 32 new tokens; scores are VADER compound sentiment.")
    page.image(png, "mean VADER compound per multiplier")
    page.table(["prompt", *[f"x{mu:+g}" for mu in mults]],
               [[p, *[next(r["text"] for r in rows if r["prompt"] == p and r["multiplier"] == mu) for mu in mults]]
                for p in STORY_PROMPTS])
    page.text("Vocabulary view of the vector (final-norm gain + unembedding): top positive tokens "
              + ", ".join(repr(t) for t, _ in vocab["positive"]) + "; top negative tokens "
              + ", ".join(repr(t) for t, _ in vocab["negative"]) + ".", muted=True)
    return {"steering": {k: v for k, v in summary.items() if k not in ("generations", "vocab")}}


def run_demo(out_dir: str | os.PathLike[str] | None = None, *, model_name: str = DEFAULT_MODEL,
             log: Callable[[str], None] = progress_info, dtype: str | None = None, device: str | None = None,
             **load_kw: Any) -> Path:
    """Run every demo section and write ``index.html`` + JSON + PNGs into ``out_dir`` (``load_kw``:
    ``device_map``/``max_memory`` for :func:`actlab.load_model`)."""
    out = Path(out_dir) if out_dir else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    with Run(out, "demo", {"model": model_name, "dtype": dtype, "device": device}) as run:
        summary = _demo(out, model_name, log, dtype, device, load_kw)
        run.results = summary
    return out


def _demo(out: Path, model_name: str, log: Callable[[str], None], dtype: str | None, device: str | None,
          load_kw: dict[str, Any] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    # loading reports its own progress when it takes a while
    model = load_model(model_name, dtype=dtype, device=device, **(load_kw or {}))
    log(f"loaded {model!r} in {time.perf_counter() - t0:.1f}s")
    page = Page(f"actlab demo: {model.name}",
                f"{model.adapter.family}, {model.n_layers} layers, d_model {model.d_model}")
    summary: dict[str, Any] = {"model": model.name}
    log("logit lens ...")
    summary.update(lens_section(model, out, page, log))
    log("steering ...")
    summary.update(steering_section(model, out, page, log))
    write_json(out / "summary.json", summary)
    page.write(out / "index.html")
    log(f"report: {out / 'index.html'}")
    return summary
