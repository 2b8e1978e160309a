"""The Learned-Feedback-Patterns pipeline as resumable stages over one run directory.

Stages (each also a CLI command, ``actlab lfp <stage> CONFIG``): finetune (only when no ``tuned_model`` is
given), divergence, sae, triples, deltas, probes, agreement, features, report. A stage writes its outputs
under ``RUN_DIR/<stage>/`` and then ``RUN_DIR/stages/<stage>.json``; ``lfp run`` skips stages whose marker
exists (``force`` re-runs them). A stage whose inputs are missing names the stage that makes them; a stage
that fails (e.g. an unreachable explainer endpoint) leaves everything before it in place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ActlabError, InputError
from ..hooks.points import HookPoint
from ..runs import Run, write_json
from .config import LFPConfig

STAGES = ("finetune", "divergence", "sae", "triples", "deltas", "probes", "agreement", "features", "report")
Log = Callable[[str], None]


class StageInputError(ActlabError):
    """A stage's inputs are missing; names the stage that produces them."""


class Context:
    """Shared state of one pipeline invocation: the config, the run folder, lazily loaded models."""

    def __init__(self, cfg: LFPConfig, log: Log):
        self.cfg, self.log = cfg, log
        self.root = Path(cfg.run_dir)
        self._models: dict[str, Any] = {}

    def dir(self, stage: str) -> Path:
        d = self.root / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def need(self, stage: str, *rel: str) -> Path:
        """A file from an earlier stage, or a clear error naming the stage that makes it."""
        p = self.root / stage / Path(*rel)
        if not p.exists() or not (self.root / "stages" / f"{stage}.json").exists():
            raise StageInputError(f"missing {p}: run the '{stage}' stage first (actlab lfp {stage} CONFIG)")
        return p

    def tuned_name(self) -> str:
        if self.cfg.tuned_model:
            return self.cfg.tuned_model
        return str(self.need("finetune", "model"))

    def model(self, which: str):
        from ..models import load_model

        name = self.cfg.base_model if which == "base" else self.tuned_name()
        if name not in self._models:
            self._models[name] = load_model(name, dtype=self.cfg.dtype, device=self.cfg.device)
        return self._models[name]

    def texts(self, n: int) -> list[str]:
        from ..data import read_texts

        if self.cfg.data is None:
            raise InputError("the config needs `data:` (a text dataset such as the IMDb CSV)")
        return [t.replace("<br />", " ") for t in read_texts(self.cfg.data, limit=n)]

    def done(self, stage: str) -> bool:
        return (self.root / "stages" / f"{stage}.json").exists()

    def mark(self, stage: str, summary: dict[str, Any]) -> None:
        write_json(self.root / "stages" / f"{stage}.json", {"stage": stage, "finished": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), **summary})


# -- stages ------------------------------------------------------------------------------------------------
def stage_finetune(ctx: Context) -> dict[str, Any]:
    from ..data import imdb_prefixes, load_preferences
    from ..finetune import train_dpo, train_rl

    cfg = ctx.cfg
    if cfg.tuned_model:
        return {"skipped": f"tuned_model given: {cfg.tuned_model}"}
    model = ctx.model("base")
    import copy

    from ..models import Model

    work = Model(copy.deepcopy(model.hf), model.tokenizer, name=model.name + "+ft", adapter=model.adapter)
    out = ctx.dir("finetune")
    ft = cfg.finetune
    if ft.method == "rl":
        data = ft.data or cfg.data
        if data is None:
            raise InputError("finetune.method rl needs finetune.data or data (IMDb CSV for review prefixes)")
        torch.manual_seed(ft.rl.seed)
        res = train_rl(work, imdb_prefixes(data, ft.rl.n_prompts, ft.rl.prompt_words), ft.rl, out)
    elif ft.method == "dpo":
        if ft.data is None:
            raise InputError("finetune.method dpo needs finetune.data (HH-RLHF or prompt/chosen/rejected JSONL)")
        res = train_dpo(work, load_preferences(ft.data, swap=ft.swap, limit=ft.n_pairs), ft.dpo, out,
                        swapped=ft.swap)
    else:
        raise InputError(f"unknown finetune method {ft.method!r}; valid: rl, dpo")
    from ..report.figures import training_history

    keys = ("reward", "kl") if ft.method == "rl" else ("preference_accuracy", "kl_estimate")
    training_history(res["history"], keys, out / "finetune.png")
    last = res["history"][-1] if res["history"] else {}
    ctx.log(f"  fine-tuned with {ft.method}: last logged step {last}")
    return {"method": ft.method, "last": last}


def stage_divergence(ctx: Context) -> dict[str, Any]:
    from ..jobs.compare import write_divergence

    base, tuned = ctx.model("base"), ctx.model("tuned")
    if type(base.hf) is not type(tuned.hf) or base.n_layers != tuned.n_layers:
        raise InputError(f"base and fine-tuned models have different architectures: {type(base.hf).__name__} "
                         f"({base.n_layers} layers) vs {type(tuned.hf).__name__} ({tuned.n_layers} layers)")
    out = ctx.dir("divergence")
    k = min(ctx.cfg.top_k_layers, base.n_layers)
    res = write_divergence(out, base, tuned, top_k=k, rank_by="mlp")
    layers = sorted(res["top_layers"])
    if not layers:
        raise InputError("the fine-tuned model's MLP parameters equal the base model's: nothing was learned to "
                         "audit (check tuned_model / the finetune stage)")
    write_json(out / "layers.json", {"layers": layers, "rule": res["rule"], "mlp_divergence": res["per_module"]
                                     .get("mlp", res["per_layer"])})
    ctx.log(f"  most divergent MLP layers: {layers}")
    return {"layers": layers}


def stage_sae(ctx: Context) -> dict[str, Any]:
    from ..report.sae import density_histogram, training_curves
    from ..sae import cache_activations
    from ..sae.runner import train_from_spec

    spec = ctx.cfg.sae
    layers = json.loads(ctx.need("divergence", "layers.json").read_text())["layers"]
    tuned = ctx.model("tuned")
    out = ctx.dir("sae")
    points = [HookPoint(i, spec.point).name for i in layers]
    cache_activations(tuned, ctx.texts(spec.n_texts), points, out / "cache", max_length=spec.max_length)
    dicts: dict[str, dict[str, str]] = {}
    metrics: dict[str, Any] = {}
    for i, point in zip(layers, points, strict=True):
        run_spec = spec.train_spec(cache=out / "cache", point=point, out=out / f"layer{i}")
        res = train_from_spec(run_spec)
        density_histogram(res.metrics, run_spec.out / "sae_metrics_density.png")
        training_curves(run_spec.out / "train_log.jsonl", run_spec.out / "sae_metrics_training.png")
        dicts[str(i)] = {c.name: str(run_spec.out / "saes" / c.name) for c in res.configs}
        metrics[str(i)] = {n: {k: v for k, v in x.items() if k != "density"} for n, x in res.metrics.items()}
        ctx.log(f"  layer {i}: " + "; ".join(f"{n} EV {x['explained_variance']:.3f} L0 {x['l0']:.1f}"
                                             for n, x in res.metrics.items()))
    write_json(out / "dictionaries.json", {"layers": layers, "point": spec.point, "dictionaries": dicts,
                                           "metrics": metrics})
    return {"layers": layers, "metrics": metrics}


def stage_triples(ctx: Context) -> dict[str, Any]:
    from ..finetune import vader_lexicon
    from ..llm import OpenAIChat
    from .triples import file_triples, lexicon_triples, llm_triples

    t = ctx.cfg.triples
    out = ctx.dir("triples")
    if t.source == "lexicon":
        rows = lexicon_triples(ctx.texts(max(4 * t.n, 200)), vader_lexicon(), n=t.n, window_words=t.window_words,
                               min_valence=t.min_valence, seed=t.seed)
    elif t.source == "file":
        if t.file is None:
            raise InputError("triples.source 'file' needs triples.file")
        rows = file_triples(t.file)
    elif t.source == "llm":
        if not t.rewriter_base_url or not t.rewriter_model:
            raise InputError("triples.source 'llm' needs triples.rewriter_base_url and triples.rewriter_model")
        rows = llm_triples(ctx.texts(t.n), OpenAIChat(t.rewriter_base_url, t.rewriter_model), positive="approval",
                           negative="disapproval", n=t.n)
    else:
        raise InputError(f"unknown triples source {t.source!r}; valid: lexicon, file, llm")
    path = out / "triples.jsonl"
    from ..runs import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    ctx.log(f"  {len(rows)} triples from {t.source}")
    return {"n": len(rows), "source": t.source}


def _load_dicts(ctx: Context) -> dict[int, Any]:
    from ..sae import load_sae

    info = json.loads(ctx.need("sae", "dictionaries.json").read_text())
    name = ctx.cfg.dictionary
    out = {}
    for layer, paths in info["dictionaries"].items():
        if name not in paths:
            raise InputError(f"dictionary {name!r} was not trained; trained: {', '.join(paths)}")
        out[int(layer)] = load_sae(paths[name])
    return out


def _triples(ctx: Context) -> list[dict[str, Any]]:
    path = ctx.need("triples", "triples.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_deltas(ctx: Context) -> dict[str, Any]:
    from safetensors.torch import save_file

    from .probes import deltas, sae_features

    rows = _triples(ctx)
    saes = _load_dicts(ctx)
    tuned = ctx.model("tuned")
    use_word = ctx.cfg.delta_position == "word"
    feats = {}
    for kind in ("positive", "neutral", "negative"):
        texts = [r[kind]["text"] for r in rows]
        spans = [r[kind]["span"] if use_word else None for r in rows]
        feats[kind] = sae_features(tuned, saes, texts, spans, point=ctx.cfg.sae.point)
    d = deltas(feats["positive"], feats["neutral"], feats["negative"])
    out = ctx.dir("deltas")
    save_file({"f_pos": feats["positive"].contiguous(), "f_neu": feats["neutral"].contiguous(),
               "f_neg": feats["negative"].contiguous(), **{k: v.float().reshape(-1) for k, v in d.items()}},
              str(out / "deltas.safetensors"))
    summary = {"n": len(rows), "n_features": int(feats["positive"].shape[1]), "position": ctx.cfg.delta_position,
               "mean_delta_pos": float(d["pos"].mean()), "mean_delta_neg": float(d["neg"].mean()),
               "scale": float(d["scale"]), "layers": sorted(saes)}
    write_json(out / "deltas.json", summary)
    ctx.log(f"  deltas: mean +{summary['mean_delta_pos']:.3f} / {summary['mean_delta_neg']:.3f} over "
            f"{summary['n_features']} features")
    return summary


def _load_deltas(ctx: Context) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ctx.need("deltas", "deltas.safetensors")))


def stage_probes(ctx: Context) -> dict[str, Any]:
    from safetensors.torch import save_file

    from .probes import fit_logistic_probe, fit_regression_probe

    t = _load_deltas(ctx)
    cfg = ctx.cfg
    out = ctx.dir("probes")
    if cfg.task == "sentiment":
        d = {"pos_scaled": t["pos_scaled"].double(), "neg_scaled": t["neg_scaled"].double()}
        res = fit_regression_probe(t["f_pos"], t["f_neu"], t["f_neg"], d, test_fraction=cfg.probe_test_fraction,
                                   alpha=cfg.probe_alpha, seed=cfg.seed)
        w = torch.from_numpy(res["probe"].coef_).float().reshape(-1)
        b = torch.tensor([float(res["probe"].intercept_)])
    else:
        res = fit_logistic_probe(t["f_pos"], t["f_neg"], test_fraction=cfg.probe_test_fraction, seed=cfg.seed)
        w = torch.from_numpy(res["probe"].coef_[0]).float()
        b = torch.tensor([float(res["probe"].intercept_[0])])
    save_file({"weight": w.contiguous(), "bias": b, "mean": torch.from_numpy(res["scaler"].mean_).float(),
               "scale": torch.from_numpy(res["scaler"].scale_).float()}, str(out / "probe.safetensors"))
    summary = {"kind": "regression" if cfg.task == "sentiment" else "logistic",
               **{k: res[k] for k in ("train", "test", "xavier_baseline_test")},
               "n_train_triples": len(res["train_triples"]), "n_test_triples": len(res["test_triples"])}
    write_json(out / "probes.json", summary)
    ctx.log(f"  probe held-out: {summary['test']}; untrained baseline: {summary['xavier_baseline_test']}")
    return summary


def _probe_predict(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file

    p = load_file(str(ctx.need("probes", "probe.safetensors")))
    return ((x.float() - p["mean"]) / p["scale"]) @ p["weight"] + p["bias"]


AGREEMENT_TEMPLATES = ("The movie was {w}.", "I thought the acting was {w}.", "Honestly, the story felt {w}.")


def stage_agreement(ctx: Context) -> dict[str, Any]:
    import random

    from ..finetune import vader_lexicon
    from .probes import agreement, sae_features

    if ctx.cfg.task != "sentiment":
        return {"skipped": "agreement with lexicon values applies to the sentiment task"}
    lex = vader_lexicon()
    saes = _load_dicts(ctx)
    tuned = ctx.model("tuned")
    rows = _triples(ctx)
    used = sorted({r[k]["word"] for r in rows for k in ("positive", "negative") if r[k].get("word")})
    pool = sorted(w for w, v in lex.items() if w.isalpha() and abs(v) >= 0.5 and w not in used)
    rng = random.Random(ctx.cfg.seed)
    extra = rng.sample(pool, max(0, min(len(pool), ctx.cfg.n_agreement_words - len(used))))
    vocab = (used + extra)[: ctx.cfg.n_agreement_words]
    preds = torch.zeros(len(vocab))
    for tpl in AGREEMENT_TEMPLATES:
        texts = [tpl.format(w=w) for w in vocab]
        spans = [[tpl.index("{w}"), tpl.index("{w}") + len(w)] for w in vocab]
        preds += _probe_predict(ctx, sae_features(tuned, saes, texts, spans, point=ctx.cfg.sae.point))
    preds /= len(AGREEMENT_TEMPLATES)
    true = [lex[w] for w in vocab]
    res = agreement(preds.tolist(), true)
    table = sorted(({"word": w, "lexicon": lex[w], "predicted": float(p)} for w, p in zip(vocab, preds, strict=True)),
                   key=lambda r: -abs(r["lexicon"]))
    out = ctx.dir("agreement")
    write_json(out / "agreement.json", {**res, "templates": list(AGREEMENT_TEMPLATES), "words": table})
    ctx.log(f"  Kendall tau {res['kendall_tau']:.3f} (p={res['p_value']:.2g}), sign accuracy "
            f"{res['sign_accuracy']:.3f} (positive {res['sign_accuracy_positive']:.3f}, negative "
            f"{res['sign_accuracy_negative']:.3f}) on {res['n_words']} words")
    return res


def stage_features(ctx: Context) -> dict[str, Any]:
    from ..data import imdb_prefixes
    from ..finetune import lexicon_reward
    from ..sae import FeatureIntervention, load_sae, overlap, top_examples
    from .explain import make_explainer

    cfg, ex = ctx.cfg, ctx.cfg.explainer
    info = json.loads(ctx.need("sae", "dictionaries.json").read_text())
    tuned = ctx.model("tuned")
    small = cfg.dictionary
    other = next((n for n in next(iter(info["dictionaries"].values())) if n != small), None)
    candidates = []  # (cos, layer, feature)
    offsets, off = {}, 0
    saes = {}
    for layer in sorted(info["dictionaries"], key=int):
        paths = info["dictionaries"][layer]
        saes[int(layer)] = load_sae(paths[small])
        offsets[int(layer)] = off
        off += saes[int(layer)].cfg.d_sae
        if other is not None:
            o = overlap(saes[int(layer)], load_sae(paths[other]), top=ex.n_features, hungarian=False)
            candidates += [(p["cos"], int(layer), p["feature_a"]) for p in o["top_pairs"]]
    if other is None:
        raise InputError("feature validation compares two dictionaries per layer; train at least two widths")
    candidates.sort(reverse=True)
    chosen = candidates[: ex.n_features]
    texts = ctx.texts(ex.n_texts)
    explainer = make_explainer(ex.kind, base_url=ex.base_url, model=ex.model)
    d = _load_deltas(ctx)
    x_all = torch.cat([d["f_pos"], d["f_neu"], d["f_neg"]])
    pred = _probe_predict(ctx, x_all)
    strong = pred.abs() >= torch.quantile(pred.abs(), 0.8)
    fires = x_all > 0
    feats = []
    for cos, layer, f in chosen:
        rows = top_examples(tuned, saes[layer], saes[layer].cfg.hook_point, texts, features=[f], k=ex.contexts,
                            max_length=cfg.sae.max_length)[f]
        if explainer is not None:
            explanation, related = explainer.explain(rows, cfg.task_description)
        else:
            explanation, related = "", None
        col = offsets[layer] + f
        feats.append({"layer": layer, "feature": f, "cos_to_other_dictionary": cos, "explanation": explanation,
                      "related": related, "firing_rate_strong": float(fires[strong, col].float().mean()),
                      "firing_rate_all": float(fires[:, col].float().mean()),
                      "contexts": [{"tokens": r["tokens"], "highlight": r["highlight"], "value": r["value"]}
                                   for r in rows]})
    if explainer is None:  # no explainer: the features the probe weighs most stand in for labelled ones
        from safetensors.torch import load_file

        w = load_file(str(ctx.need("probes", "probe.safetensors")))["weight"].abs()
        cols = {offsets[r["layer"]] + r["feature"]: r for r in feats}
        ranked = sorted(cols, key=lambda c: -float(w[c]))
        for c in ranked[: max(1, len(ranked) // 4)]:
            cols[c]["related"] = True
        label_note = "no explainer configured: the top quarter of the features by |probe weight| are labelled"
    else:
        label_note = f"labels from {explainer.name}"
    related = [r for r in feats if r["related"]]
    avg_strong = float(fires[strong].float().mean())
    freq = {"related_firing_rate_strong": (sum(r["firing_rate_strong"] for r in related) / len(related)
                                           if related else None),
            "related_firing_rate_all": (sum(r["firing_rate_all"] for r in related) / len(related)
                                        if related else None),
            "average_feature_firing_rate_strong": avg_strong,
            "average_feature_firing_rate_all": float(fires.float().mean())}
    # ablation of the related features during generation, scored with the lexicon reward
    prompts = imdb_prefixes(cfg.data, cfg.ablation_prompts) if cfg.data else []
    ablation: dict[str, Any] = {"n_prompts": len(prompts)}
    if prompts:
        def mean_reward() -> float:
            gens = tuned.generate_text(prompts, max_new_tokens=cfg.ablation_new_tokens)
            return sum(lexicon_reward(g) for g in gens) / len(gens)

        ablation["reward_before"] = mean_reward()
        if related:
            from contextlib import ExitStack

            with ExitStack() as stack:
                for layer in sorted({r["layer"] for r in related}):
                    fs = [r["feature"] for r in related if r["layer"] == layer]
                    stack.enter_context(FeatureIntervention(tuned, saes[layer], saes[layer].cfg.hook_point,
                                                            ablate=fs))
                ablation["reward_after"] = mean_reward()
            ablation["ablated"] = [[r["layer"], r["feature"]] for r in related]
    out = ctx.dir("features")
    summary = {"label_note": label_note, "frequency": freq, "ablation": ablation, "n_features": len(feats),
               "n_related": len(related)}
    write_json(out / "features.json", {**summary, "features": feats})
    ctx.log(f"  {len(related)}/{len(feats)} features labelled related; ablation reward "
            f"{ablation.get('reward_before', float('nan')):.3f} -> {ablation.get('reward_after', float('nan')):.3f}")
    return summary


def stage_report(ctx: Context) -> dict[str, Any]:
    from ..report.lfp import build_lfp_report

    path = build_lfp_report(ctx.root, ctx.cfg)
    ctx.log(f"  report: {path}")
    return {"report": str(path)}


STAGE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "finetune": stage_finetune, "divergence": stage_divergence, "sae": stage_sae, "triples": stage_triples,
    "deltas": stage_deltas, "probes": stage_probes, "agreement": stage_agreement, "features": stage_features,
    "report": stage_report,
}


def run_stage(cfg: LFPConfig, stage: str, *, log: Log = print, ctx: Context | None = None) -> dict[str, Any]:
    """Run one stage (its run record says ``lfp <stage>``); inside :func:`run_pipeline` the pipeline's record
    covers it."""
    if stage not in STAGE_FUNCS:
        raise InputError(f"unknown LFP stage {stage!r}; valid: {', '.join(STAGES)}")
    if ctx is None:
        ctx = Context(cfg, log)
        with Run(ctx.root, f"lfp {stage}", cfg.model_dump(mode="json"), seed=cfg.seed) as run:
            summary = _stage(ctx, stage)
            run.results = {stage: summary}
        return summary
    return _stage(ctx, stage)


def _stage(ctx: Context, stage: str) -> dict[str, Any]:
    cfg, log = ctx.cfg, ctx.log
    log(f"[{stage}]")
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    summary = STAGE_FUNCS[stage](ctx)
    ctx.mark(stage, {**summary, "seconds": round(time.perf_counter() - t0, 2)})
    return summary


def run_pipeline(cfg: LFPConfig, *, force: bool = False, log: Log = print, until: str | None = None
                 ) -> dict[str, Any]:
    """Run every stage in order, skipping finished ones (unless ``force``)."""
    ctx = Context(cfg, log)
    results = {}
    with Run(ctx.root, "lfp run", cfg.model_dump(mode="json"), seed=cfg.seed) as run:
        for stage in STAGES:
            if ctx.done(stage) and not force:
                log(f"[{stage}] done earlier, skipped")
                continue
            results[stage] = run_stage(cfg, stage, log=log, ctx=ctx)
            run.results = {"stages_run": list(results)}
            if stage == until:
                break
    return results
