"""The feature-validation stage (the study's Tables 7-9): the features both dictionary widths agree on, labelled
related or not to the fine-tuning objective (by an explainer model, or - without one - by the probe's own
statistics as a self-consistency check), how often they fire on strongly-predicted inputs, and the reward when
the related ones are ablated during generation, beside as many random features."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...errors import InputError
from ...finetune import lexicon_reward
from ...progress import task as progress_task
from ...progress import track
from ...sae import FeatureEdit, load_sae, overlap, top_examples
from ..completions import complete, prefixes
from ..explain import make_explainer
from ..outputs import Deltas, Dictionaries, Features, LayerChoice, Probe, Triples

if TYPE_CHECKING:
    from ...sae.dictionary import SparseAutoencoder
    from ..pipeline import Context


@dataclass
class Candidates:
    """The dictionary the probe reads, per layer; each layer's first column in the probe's input; and the features
    both widths agree on (cosine, layer, feature), best first."""

    saes: dict[int, SparseAutoencoder] = field(default_factory=dict)
    offsets: dict[int, int] = field(default_factory=dict)
    chosen: list[tuple[float, int, int]] = field(default_factory=list)


def candidates(ctx: Context, info: Dictionaries, n_features: int) -> Candidates:
    small = ctx.cfg.dictionary
    other = next((n for n in next(iter(info.dictionaries.values())) if n != small), None)
    if other is None:
        raise InputError("feature validation compares two dictionaries per layer; train at least two widths")
    out, off, pairs = Candidates(), 0, []
    for layer in sorted(info.dictionaries, key=int):
        paths = info.dictionaries[layer]
        out.saes[int(layer)] = load_sae(paths[small])
        out.offsets[int(layer)] = off
        off += out.saes[int(layer)].cfg.d_sae
        o = overlap(out.saes[int(layer)], load_sae(paths[other]), top=n_features, hungarian=False)
        pairs += [(p["cos"], int(layer), p["feature_a"]) for p in o["top_pairs"]]
    out.chosen = sorted(pairs, reverse=True)[:n_features]
    return out


def self_consistency_labels(feats: list[dict[str, Any]], x: torch.Tensor, pred: torch.Tensor) -> None:
    """Without an explainer: the quarter of the features most correlated with the probe's output (on the half
    of the examples the firing rates are not measured on) are labelled related. ``x``: ``[examples, features]``,
    a column per entry of ``feats``."""
    xa, pa = x.double(), pred.double()
    xa, pa = xa - xa.mean(0), pa - pa.mean()
    corr = (xa * pa[:, None]).sum(0) / (xa.norm(dim=0) * pa.norm()).clamp_min(1e-12)
    ranked = sorted(range(len(feats)), key=lambda c: -abs(float(corr[c])))
    for c in ranked[: max(1, len(ranked) // 4)]:
        feats[c]["related"] = True


def ablation_rewards(ctx: Context, cand: Candidates, related: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean lexicon reward of the fine-tuned model's continuations of IMDb prefixes: as it is, with the related
    features zero-ablated, and with as many random features of each layer ablated (the baseline)."""
    cfg = ctx.cfg
    tuned = ctx.model("tuned")
    prompts = prefixes(cfg.data, cfg.ablation_prompts, cfg.completions, tuned.tokenizer) if cfg.data else []
    out: dict[str, Any] = {"n_prompts": len(prompts), "decoding": cfg.completions.describe()}
    if not prompts:
        return out

    def mean_reward(which: dict[int, list[int]] | None = None, what: str = "none ablated") -> float:
        with ExitStack() as stack:
            for layer, fs in (which or {}).items():
                stack.enter_context(tuned.edit(FeatureEdit(cand.saes[layer], cand.saes[layer].cfg.hook_point,
                                                           ablate=fs)))
            with progress_task(f"ablation generations ({what})", total=len(prompts), unit="prompts") as task:
                gens = complete(tuned, prompts, cfg.completions, max_new_tokens=cfg.ablation_new_tokens,
                                seed=cfg.seed, advance=task.advance)
        return sum(lexicon_reward(g) for g in gens) / len(gens)

    out["reward_before"] = mean_reward()
    if not related:
        return out
    by_layer: dict[int, list[int]] = {}
    for r in related:
        by_layer.setdefault(r["layer"], []).append(r["feature"])
    g = torch.Generator().manual_seed(cfg.seed + 1)
    random_by_layer = {}
    for layer, fs in by_layer.items():
        pool = [f for f in range(cand.saes[layer].cfg.d_sae) if f not in fs]
        random_by_layer[layer] = sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[: len(fs)].tolist())
    out["reward_after"] = mean_reward(by_layer, "related features ablated")
    out["reward_after_random"] = mean_reward(random_by_layer, "random features ablated")
    out["ablated"] = [[r["layer"], r["feature"]] for r in related]
    out["random_ablated"] = [[layer, f] for layer, fs in random_by_layer.items() for f in fs]
    return out


def _scores(scorer: Any, simulator: Any, examples: Any, explanation: str, per_request: int) -> dict[str, Any]:
    """Detection and fuzzing (and simulation) scores of one label (:mod:`actlab.explain`)."""
    from ...explain import detection, fuzzing, simulation

    if not examples.top:
        return {}
    out = {"detection": detection(scorer, explanation, examples, per_request=per_request),
           "fuzzing": fuzzing(scorer, explanation, examples, per_request=per_request)}
    if simulator is not None:
        out["simulation"] = simulation(simulator, explanation, examples)
    return out


@dataclass
class Source:
    """Where the features stage's candidates come from. ``chosen``: one row per candidate (layer, feature,
    ``cos_to_other_dictionary`` and, for a crosscoder, its class); ``values``: ``[examples, candidates]`` their
    values on the triples' variants (the rows of the deltas' features, positive then neutral then negative);
    ``all_fires``: ``[examples, every live latent]`` whether each latent fires, for the average firing rate."""

    kind: str
    chosen: list[dict[str, Any]]
    values: torch.Tensor
    all_fires: torch.Tensor
    top: Callable[[dict[str, Any], int], list[dict[str, Any]]]
    examples: Callable[[dict[str, Any]], Any]
    ablate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def sae_source(ctx: Context, x_all: torch.Tensor) -> Source:
    """The study's protocol: features both dictionary widths agree on (max decoder cosine), read from the
    tuned model's SAEs through the deltas stage's features."""
    from ...explain import collect

    cfg, ex = ctx.cfg, ctx.cfg.explainer
    cand = candidates(ctx, ctx.read(Dictionaries, "sae"), ex.n_features)
    tuned, texts = ctx.model("tuned"), ctx.texts(ex.n_texts)
    chosen = [{"layer": layer, "feature": f, "cos_to_other_dictionary": cos} for cos, layer, f in cand.chosen]
    cols = [cand.offsets[r["layer"]] + r["feature"] for r in chosen]

    def top(r: dict[str, Any], k: int) -> list[dict[str, Any]]:
        sae = cand.saes[r["layer"]]
        return top_examples(tuned, sae, sae.cfg.hook_point, texts, features=[r["feature"]], k=k,
                            max_length=cfg.sae.max_length)[r["feature"]]

    def examples(r: dict[str, Any]) -> Any:
        sae = cand.saes[r["layer"]]
        return collect(tuned, sae, sae.cfg.hook_point, texts, [r["feature"]], n_top=ex.contexts,
                       n_quantile=ex.contexts, n_negative=2 * ex.contexts, max_length=cfg.sae.max_length)[0]

    return Source("sae_overlap", chosen, x_all[:, cols], x_all > 0, top, examples,
                  lambda related: ablation_rewards(ctx, cand, related))


def _crosscoder_layer(ctx: Context) -> int:
    spec = ctx.cfg.crosscoder
    if spec.layer is not None:
        return spec.layer
    lay = ctx.read(LayerChoice, "divergence")
    if not lay.layers:
        raise InputError("the divergence stage selected no layer; set crosscoder.layer")
    return max(lay.layers, key=lambda i: lay.mlp_divergence[i] if i < len(lay.mlp_divergence) else 0.0)


@torch.no_grad()
def crosscoder_values(base: Any, tuned: Any, cc: Any, points: tuple[str, str], texts: list[str],
                      spans: list[Any], *, batch_size: int = 16) -> torch.Tensor:
    """``[texts, d_sae]``: per text, the crosscoder's codes averaged over its positions (the word's tokens, or
    every token when its span is None) - the SAE features' reading (:func:`actlab.lfp.probes.sae_features`)."""
    from ..probes import token_positions

    names = [m.parse_points(p)[0].name for m, p in zip((base, tuned), points, strict=True)]
    out = []
    for s in range(0, len(texts), batch_size):
        chunk = texts[s:s + batch_size]
        pos = [token_positions(tuned, t, sp) for t, sp in zip(chunk, spans[s:s + batch_size], strict=True)]
        batch = tuned.tokenize(chunk, padding_side="right")
        mask = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
        for b, q in enumerate(pos):
            mask[b, q] = True
        parts = [m.activations(batch, n, positions=mask)[n] for m, n in zip((base, tuned), names, strict=True)]
        codes = cc.encode(torch.cat(parts, -1).to(cc.b_enc.device)).cpu()
        out.append(torch.stack([c.mean(0) for c in torch.split(codes, [len(q) for q in pos])]))
    return torch.cat(out)


def crosscoder_source(ctx: Context) -> Source:
    """Minder et al. (2025)'s reading: one BatchTopK crosscoder over both models at one layer; the candidates are
    its tuned-only latents (most tuned-leaning first), then shared latents whose decoder direction moved (cosine
    below ``crosscoder.shifted_cosine``, lowest first), among latents firing on at least
    ``crosscoder.min_frequency`` of the held-out tokens (rarer ones have barely trained decoders)."""
    import json

    from ...crosscoder import load_crosscoder
    from ...crosscoder.dashboards import ModelView, paired_read
    from ...crosscoder.edit import generate_ablated
    from ...explain import collect
    from ...hooks.points import HookPoint
    from ...jobs.diffing import crosscoder as train_crosscoder

    cfg, ex, spec = ctx.cfg, ctx.cfg.explainer, ctx.cfg.crosscoder
    layer = _crosscoder_layer(ctx)
    point = HookPoint(layer, spec.point or cfg.sae.point).name
    base, tuned = ctx.model("base"), ctx.model("tuned")
    folder = ctx.dir("features") / "crosscoder"
    ctx.log(f"  crosscoder at {point}: base vs tuned, {spec.steps} steps")
    summary = train_crosscoder(base, tuned, ctx.texts(spec.n_texts), folder, point=point, limit=None,
                               max_length=spec.max_length, expansion=spec.expansion, k=spec.k, steps=spec.steps,
                               batch_size=spec.batch_size, lr=spec.lr, seed=cfg.seed, dashboards=0)
    analysis = json.loads((folder / "latents.json").read_text(encoding="utf-8"))
    cc = load_crosscoder(folder / "crosscoder" / analysis["config"]["name"])
    latents = analysis["latents"]
    live = [x for x in latents if x["class"] != "dead" and x["frequency"] >= spec.min_frequency]
    tuned_only = sorted((x for x in live if x["class"] == "tuned-only"), key=lambda x: -x["delta"])
    shifted = sorted((x for x in live if x["class"] == "shared" and x["cosine"] is not None
                      and x["cosine"] < spec.shifted_cosine), key=lambda x: x["cosine"])
    picks = [(x, "tuned-only") for x in tuned_only] + [(x, "shared-shifted") for x in shifted]
    chosen = [{"layer": layer, "feature": x["latent"], "cos_to_other_dictionary": x["cosine"], "class": kind,
               "relative_norm_difference": x["delta"]} for x, kind in picks[: ex.n_features]]
    rows = ctx.read(Triples, "triples").rows
    use_word = cfg.delta_position == "word"
    values = torch.cat([crosscoder_values(base, tuned, cc, (point, point), [r[k]["text"] for r in rows],
                                          [r[k]["span"] if use_word else None for r in rows])
                        for k in ("positive", "neutral", "negative")])
    alive = [x["latent"] for x in live]
    view, read = ModelView(cc, 1), paired_read((base, tuned), (point, point))
    texts = ctx.texts(ex.n_texts)

    def top(r: dict[str, Any], k: int) -> list[dict[str, Any]]:
        return top_examples(tuned, view, point, texts, features=[r["feature"]], k=k, max_length=cfg.sae.max_length,
                            read=read)[r["feature"]]

    def examples(r: dict[str, Any]) -> Any:
        return collect(tuned, view, point, texts, [r["feature"]], n_top=ex.contexts, n_quantile=ex.contexts,
                       n_negative=2 * ex.contexts, max_length=cfg.sae.max_length, read=read)[0]

    def ablate(related: list[dict[str, Any]]) -> dict[str, Any]:
        prompts = prefixes(cfg.data, cfg.ablation_prompts, cfg.completions, tuned.tokenizer) if cfg.data else []
        out: dict[str, Any] = {"n_prompts": len(prompts), "decoding": "greedy, crosscoder latents zero-ablated "
                               "in the tuned model (the base model reads the same tokens at each step)"
                               + ("; sampling is not supported on this path, so the study's sampled completions "
                                  "are greedy here" if cfg.completions.sample else "")}
        if not prompts:
            return out

        def reward(which: list[int], what: str) -> float:
            ctx.log(f"  ablation generations ({what})")
            gens = generate_ablated(base, tuned, cc, (point, point), prompts, which,
                                    max_new_tokens=cfg.ablation_new_tokens)
            return sum(lexicon_reward(g) for g in gens) / len(gens)

        out["reward_before"] = reward([], "none ablated")
        if not related:
            return out
        fs = sorted({r["feature"] for r in related})
        g = torch.Generator().manual_seed(cfg.seed + 1)
        pool = [j for j in alive if j not in fs]
        rand = sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[: len(fs)].tolist())
        out["reward_after"] = reward(fs, "related latents ablated")
        out["reward_after_random"] = reward(rand, "random latents ablated")
        out["ablated"] = [[layer, f] for f in fs]
        out["random_ablated"] = [[layer, f] for f in rand]
        return out

    shared_cos = [x["cosine"] for x in live if x["class"] == "shared" and x["cosine"] is not None]
    summary = {"layer": layer, "point": point, "folder": "features/crosscoder", **summary,
               "candidates": {"tuned-only": len(tuned_only), "shared-shifted": len(shifted)},
               "shifted_cosine": spec.shifted_cosine, "lowest_shared_cosine": min(shared_cos, default=None)}
    return Source("crosscoder", chosen, values[:, [r["feature"] for r in chosen]], values[:, alive] > 0, top,
                  examples, ablate, summary)


def base_features(ctx: Context, explainer: Any) -> dict[str, Any]:
    """The study's Appendix B comparison: dictionaries trained on the *base* model at the same layers (into
    ``features/base``), their features chosen the same way (both widths agree) and explained by the same
    explainer, so the share of task-related features can be read fine-tuned vs base. Without an explainer
    there are no labels for the base model (the probe reads the tuned model's dictionaries), so only the
    dictionaries are trained and the output says so."""
    from .models import train_dictionaries

    cfg, ex = ctx.cfg, ctx.cfg.explainer
    layers = ctx.read(LayerChoice, "divergence").layers
    base_model = ctx.model("base")
    dicts, metrics = train_dictionaries(ctx, base_model, layers, ctx.dir("features") / "base", ctx.label("base"))
    out: dict[str, Any] = {"model": base_model.name, "folder": "features/base", "dictionaries": dicts,
                           "metrics": metrics}
    if explainer is None:
        out["note"] = ("no explainer: the base model's features cannot be labelled (the probe reads the fine-tuned "
                       "model's dictionaries), so no related share is reported")
        return out
    cand = candidates(ctx, Dictionaries(layers, cfg.sae.point, dicts, metrics), ex.n_features)
    texts = ctx.texts(ex.n_texts)
    feats = []
    for cos, layer, f in track(cand.chosen, "labelling the base model's features", unit="features"):
        sae = cand.saes[layer]
        rows = top_examples(base_model, sae, sae.cfg.hook_point, texts, features=[f], k=ex.contexts,
                            max_length=cfg.sae.max_length)[f]
        explanation, related = explainer.explain(rows, cfg.task_description) if rows else ("", None)
        feats.append({"layer": layer, "feature": f, "cos_to_other_dictionary": cos, "explanation": explanation,
                      "related": related})
    labelled = [x for x in feats if x["related"] is not None]
    out.update({"features": feats, "n_features": len(feats), "n_related": sum(bool(x["related"]) for x in feats),
                "related_share": (sum(bool(x["related"]) for x in labelled) / len(labelled)) if labelled else None})
    return out


def stage_features(ctx: Context) -> dict[str, Any]:
    cfg, ex = ctx.cfg, ctx.cfg.explainer
    x_all = ctx.read(Deltas, "deltas").features()  # the probe's inputs; the SAE candidates' values too
    src = crosscoder_source(ctx) if cfg.feature_source == "crosscoder" else sae_source(ctx, x_all)
    explainer = make_explainer(ex.kind, base_url=ex.base_url, model=ex.model)
    scorer = simulator = None
    if ex.score and ex.base_url and ex.model:  # labels scored by detection and fuzzing (Paulo et al. 2024)
        from ...llm import ReplyCache, endpoint_asker

        kw = {"cache": ReplyCache(ctx.dir("features") / "llm_cache"), "top_logprobs": ex.logprobs}
        scorer = endpoint_asker(ex.base_url, ex.model, max_tokens=64, **kw)
        if ex.simulate:
            simulator = endpoint_asker(ex.base_url, ex.model, max_tokens=4 * cfg.sae.max_length + 16, **kw)
    n_ex = len(src.values)
    pred = ctx.read(Probe, "probes").predict(x_all)
    # Without an explainer the labels come from the probe's own statistics, so they are chosen on one half of
    # the examples and the firing rates measured on the other (a self-consistency check, said so in the output).
    perm = torch.randperm(n_ex, generator=torch.Generator().manual_seed(cfg.seed))
    label_idx, measure_idx = perm[: n_ex // 2], perm[n_ex // 2:]
    if explainer is not None:
        measure_idx = torch.arange(n_ex)
    p_m = pred[measure_idx]
    if cfg.strong_inputs == "paper":  # the study: predicted delta > 3 on the valence scale (the probe's is /5)
        strong = p_m.abs() > 3.0 / 5.0
        strong_rule = "|prediction| > 3 on the lexicon's valence scale (the study's definition)"
    else:
        strong = p_m.abs() >= torch.quantile(p_m.abs(), 0.8)
        strong_rule = "the top 20% of |prediction|"
    fires = src.values[measure_idx] > 0
    all_fires = src.all_fires[measure_idx]
    feats = []
    for i, row in enumerate(track(src.chosen, "labelling features", unit="features")):
        rows = src.top(row, ex.contexts)
        explanation, related = explainer.explain(rows, cfg.task_description) if explainer is not None and rows \
            else ("", None)  # a feature silent on every label text is not shown to the explainer
        feats.append({**row, "explanation": explanation, "related": related,
                      "firing_rate_strong": float(fires[strong, i].float().mean()) if strong.any() else None,
                      "firing_rate_all": float(fires[:, i].float().mean()),
                      "contexts": [{"tokens": r["tokens"], "highlight": r["highlight"], "value": r["value"]}
                                   for r in rows]})
        if scorer is not None and explanation:
            feats[-1].update(_scores(scorer, simulator, src.examples(row), explanation, ex.per_request))
    if explainer is None:
        self_consistency_labels(feats, src.values[label_idx], pred[label_idx])
        label_note = ("no explainer configured: SELF-CONSISTENCY CHECK, not the study's Table 7. The top quarter "
                      "of the features by |correlation with the probe's output| on one half of the examples are "
                      "labelled related; the firing rates are measured on the other half")
    else:
        label_note = f"labels from {explainer.name}; firing rates measured on every example"
    if src.kind == "crosscoder":
        label_note += ("; candidates: the crosscoder's tuned-only latents, then shared latents whose decoder "
                       "direction moved (not per-model SAEs matched by cosine)")
        if not feats:
            low = src.summary.get("lowest_shared_cosine")
            label_note += (f". NO CANDIDATE: no tuned-only latent and no shared latent with decoder cosine below "
                           f"{cfg.crosscoder.shifted_cosine} (lowest: {'n/a' if low is None else f'{low:.3f}'}) - "
                           "the fine-tuning changed too little at this layer for the crosscoder to separate; raise "
                           "crosscoder.shifted_cosine to read the most-moved shared latents")
    related = [r for r in feats if r["related"]]
    freq = {"related_firing_rate_strong": (sum(r["firing_rate_strong"] for r in related) / len(related)
                                           if related and strong.any() else None),
            "related_firing_rate_all": (sum(r["firing_rate_all"] for r in related) / len(related)
                                        if related else None),
            "average_feature_firing_rate_strong": float(all_fires[strong].float().mean()) if strong.any() else None,
            "average_feature_firing_rate_all": float(all_fires.float().mean()),
            "self_consistency": explainer is None, "n_examples_measured": len(measure_idx),
            "strong_inputs": strong_rule, "n_strong": int(strong.sum())}
    ablation = src.ablate(related)
    ctx.dir("features")
    base = base_features(ctx, explainer) if cfg.features_on_base else {}
    result = Features(label_note, freq, ablation, len(feats), len(related), feats, src.kind, src.summary, base)
    result.write(ctx.root)
    ctx.log(f"  {len(related)}/{len(feats)} features labelled related; ablation reward "
            f"{ablation.get('reward_before', float('nan')):.3f} -> {ablation.get('reward_after', float('nan')):.3f} "
            f"(as many random features: {ablation.get('reward_after_random', float('nan')):.3f})")
    return {"label_note": label_note, "frequency": freq, "ablation": ablation, "n_features": len(feats),
            "n_related": len(related), "source": src.kind}
