"""The feature-validation stage (the study's Tables 7-9): the features both dictionary widths agree on, labelled
related or not to the fine-tuning objective (by an explainer model, or - without one - by the probe's own
statistics as a self-consistency check), how often they fire on strongly-predicted inputs, and the reward when
the related ones are ablated during generation, beside as many random features."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ...data import imdb_prefixes
from ...errors import InputError
from ...finetune import lexicon_reward
from ...progress import task as progress_task
from ...progress import track
from ...sae import FeatureEdit, load_sae, overlap, top_examples
from ..explain import make_explainer
from ..outputs import Deltas, Dictionaries, Features, Probe

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


def self_consistency_labels(feats: list[dict[str, Any]], cand: Candidates, x: torch.Tensor,
                            pred: torch.Tensor) -> None:
    """Without an explainer: the quarter of the features most correlated with the probe's output (on the half
    of the examples the firing rates are not measured on) are labelled related."""
    xa, pa = x.double(), pred.double()
    xa, pa = xa - xa.mean(0), pa - pa.mean()
    corr = (xa * pa[:, None]).sum(0) / (xa.norm(dim=0) * pa.norm()).clamp_min(1e-12)
    cols = {cand.offsets[r["layer"]] + r["feature"]: r for r in feats}
    ranked = sorted(cols, key=lambda c: -abs(float(corr[c])))
    for c in ranked[: max(1, len(ranked) // 4)]:
        cols[c]["related"] = True


def ablation_rewards(ctx: Context, cand: Candidates, related: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean lexicon reward of the fine-tuned model's continuations of IMDb prefixes: as it is, with the related
    features zero-ablated, and with as many random features of each layer ablated (the baseline)."""
    cfg = ctx.cfg
    prompts = imdb_prefixes(cfg.data, cfg.ablation_prompts) if cfg.data else []
    out: dict[str, Any] = {"n_prompts": len(prompts)}
    if not prompts:
        return out
    tuned = ctx.model("tuned")

    def mean_reward(which: dict[int, list[int]] | None = None, what: str = "none ablated") -> float:
        with ExitStack() as stack:
            for layer, fs in (which or {}).items():
                stack.enter_context(tuned.edit(FeatureEdit(cand.saes[layer], cand.saes[layer].cfg.hook_point,
                                                           ablate=fs)))
            with progress_task(f"ablation generations ({what})", total=len(prompts), unit="prompts") as task:
                gens = []
                for s in range(0, len(prompts), 16):
                    gens += tuned.generate_text(prompts[s:s + 16], max_new_tokens=cfg.ablation_new_tokens)
                    task.advance(len(prompts[s:s + 16]))
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


def _scores(scorer: Any, model: Any, sae: Any, texts: list[str], f: int, explanation: str, ex: Any,
            max_length: int) -> dict[str, Any]:
    """Detection and fuzzing scores of one label (:mod:`actlab.explain`)."""
    from ...explain import collect, detection, fuzzing

    (examples,) = collect(model, sae, sae.cfg.hook_point, texts, [f], n_top=ex.contexts, n_quantile=ex.contexts,
                          n_negative=2 * ex.contexts, max_length=max_length)
    if not examples.top:
        return {}
    return {"detection": detection(scorer, explanation, examples, per_request=ex.per_request),
            "fuzzing": fuzzing(scorer, explanation, examples, per_request=ex.per_request)}


def stage_features(ctx: Context) -> dict[str, Any]:
    cfg, ex = ctx.cfg, ctx.cfg.explainer
    cand = candidates(ctx, ctx.read(Dictionaries, "sae"), ex.n_features)
    tuned = ctx.model("tuned")
    texts = ctx.texts(ex.n_texts)
    explainer = make_explainer(ex.kind, base_url=ex.base_url, model=ex.model)
    scorer = None
    if ex.score and ex.base_url and ex.model:  # labels scored by detection and fuzzing (Paulo et al. 2024)
        from ...llm import ReplyCache, endpoint_asker

        scorer = endpoint_asker(ex.base_url, ex.model, cache=ReplyCache(ctx.dir("features") / "llm_cache"),
                                max_tokens=64)
    x_all = ctx.read(Deltas, "deltas").features()
    pred = ctx.read(Probe, "probes").predict(x_all)
    # Without an explainer the labels come from the probe's own statistics, so they are chosen on one half of
    # the examples and the firing rates measured on the other (a self-consistency check, said so in the output).
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed))
    label_idx, measure_idx = perm[: len(perm) // 2], perm[len(perm) // 2:]
    if explainer is not None:
        measure_idx = torch.arange(len(x_all))
    x_m, p_m = x_all[measure_idx], pred[measure_idx]
    strong = p_m.abs() >= torch.quantile(p_m.abs(), 0.8)
    fires = x_m > 0
    feats = []
    for cos, layer, f in track(cand.chosen, "labelling features", unit="features"):
        sae = cand.saes[layer]
        rows = top_examples(tuned, sae, sae.cfg.hook_point, texts, features=[f], k=ex.contexts,
                            max_length=cfg.sae.max_length)[f]
        explanation, related = explainer.explain(rows, cfg.task_description) if explainer is not None else ("", None)
        col = cand.offsets[layer] + f
        feats.append({"layer": layer, "feature": f, "cos_to_other_dictionary": cos, "explanation": explanation,
                      "related": related, "firing_rate_strong": float(fires[strong, col].float().mean()),
                      "firing_rate_all": float(fires[:, col].float().mean()),
                      "contexts": [{"tokens": r["tokens"], "highlight": r["highlight"], "value": r["value"]}
                                   for r in rows]})
        if scorer is not None and explanation:
            feats[-1].update(_scores(scorer, tuned, sae, texts, f, explanation, ex, cfg.sae.max_length))
    if explainer is None:
        self_consistency_labels(feats, cand, x_all[label_idx], pred[label_idx])
        label_note = ("no explainer configured: SELF-CONSISTENCY CHECK, not the study's Table 7. The top quarter "
                      "of the features by |correlation with the probe's output| on one half of the examples are "
                      "labelled related; the firing rates are measured on the other half")
    else:
        label_note = f"labels from {explainer.name}; firing rates measured on every example"
    related = [r for r in feats if r["related"]]
    freq = {"related_firing_rate_strong": (sum(r["firing_rate_strong"] for r in related) / len(related)
                                           if related else None),
            "related_firing_rate_all": (sum(r["firing_rate_all"] for r in related) / len(related)
                                        if related else None),
            "average_feature_firing_rate_strong": float(fires[strong].float().mean()),
            "average_feature_firing_rate_all": float(fires.float().mean()),
            "self_consistency": explainer is None, "n_examples_measured": len(measure_idx)}
    ablation = ablation_rewards(ctx, cand, related)
    ctx.dir("features")
    result = Features(label_note, freq, ablation, len(feats), len(related), feats)
    result.write(ctx.root)
    ctx.log(f"  {len(related)}/{len(feats)} features labelled related; ablation reward "
            f"{ablation.get('reward_before', float('nan')):.3f} -> {ablation.get('reward_after', float('nan')):.3f} "
            f"(as many random features: {ablation.get('reward_after_random', float('nan')):.3f})")
    return {"label_note": label_note, "frequency": freq, "ablation": ablation, "n_features": len(feats),
            "n_related": len(related)}
