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
from ..progress import info as progress_info
from ..progress import task as progress_task
from ..progress import track
from ..runs import Run, refuse_links, write_json
from .config import LFPConfig
from .stages import STAGES

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
        d = refuse_links(self.root, self.root / stage, "LFP stage folder")
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
            extra = {"device_map": self.cfg.device_map} if self.cfg.device_map else {}
            if self.cfg.max_memory:
                extra = {"device_map": self.cfg.device_map or "auto",
                         "max_memory": {int(k) if k.isdigit() else k: v for k, v in self.cfg.max_memory.items()}}
            self._models[name] = load_model(name, dtype=self.cfg.dtype, device=self.cfg.device, **extra)
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
    ctx.log(f"  fine-tuned with {ft.method}: " + (_metrics_line(last) if last else "nothing logged"))
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
    from .triples import file_triples, lexicon_triples, llm_triples, split_lexicon

    t = ctx.cfg.triples
    out = ctx.dir("triples")
    if t.source == "lexicon":
        lex = vader_lexicon()
        split = split_lexicon(lex, t.heldout_fraction, t.seed)
        write_json(out / "word_split.json", {"seed": t.seed, "heldout_fraction": t.heldout_fraction,
                                             "rule": "scoreable lexicon words (alphabetic, |valence| >= 0.5) split "
                                                     "at random; triples substitute only training words",
                                             **split})
        rows = lexicon_triples(ctx.texts(max(4 * t.n, 200)), lex, n=t.n, window_words=t.window_words,
                               min_valence=t.min_valence, seed=t.seed, allowed=set(split["train"]))
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
    ctx.log(f"  probe held-out: {_metrics_line(summary['test'])}; untrained baseline: "
            f"{_metrics_line(summary['xavier_baseline_test'])}")
    return summary


def _probe_predict(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    from safetensors.torch import load_file

    p = load_file(str(ctx.need("probes", "probe.safetensors")))
    return ((x.float() - p["mean"]) / p["scale"]) @ p["weight"] + p["bias"]


AGREEMENT_TEMPLATES = ("The movie was {w}.", "I thought the acting was {w}.", "Honestly, the story felt {w}.")


def _probe_untrained(ctx: Context, x: torch.Tensor) -> torch.Tensor:
    """The untrained (Xavier) probe of the probes stage's baseline, on the same standardised inputs."""
    from safetensors.torch import load_file

    from .probes import xavier_predictions

    p = load_file(str(ctx.need("probes", "probe.safetensors")))
    z = ((x.float() - p["mean"]) / p["scale"]).double().numpy()
    return torch.from_numpy(xavier_predictions(z, ctx.cfg.seed)).float()


def _word_predictions(ctx: Context, words: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Trained and untrained probe outputs per word, each averaged over the agreement templates."""
    from .probes import sae_features

    saes, tuned = _load_dicts(ctx), ctx.model("tuned")
    trained, untrained = torch.zeros(len(words)), torch.zeros(len(words))
    for tpl in AGREEMENT_TEMPLATES:
        texts = [tpl.format(w=w) for w in words]
        spans = [[tpl.index("{w}"), tpl.index("{w}") + len(w)] for w in words]
        x = sae_features(tuned, saes, texts, spans, point=ctx.cfg.sae.point)
        trained += _probe_predict(ctx, x)
        untrained += _probe_untrained(ctx, x)
    return trained / len(AGREEMENT_TEMPLATES), untrained / len(AGREEMENT_TEMPLATES)


def _generated_counts(ctx: Context, words: list[str]) -> dict[str, int]:
    """How often the fine-tuned model generates each word from IMDb prefixes (greedy)."""
    from collections import Counter

    from ..data import imdb_prefixes
    from ..finetune import words as split_words

    if ctx.cfg.data is None or ctx.cfg.frequency_prompts <= 0:
        return {}
    tuned = ctx.model("tuned")
    prompts = imdb_prefixes(ctx.cfg.data, ctx.cfg.frequency_prompts)
    counts: Counter[str] = Counter()
    with progress_task("generating for word frequencies", total=len(prompts), unit="prompts") as task:
        for s in range(0, len(prompts), 16):
            for g in tuned.generate_text(prompts[s:s + 16], max_new_tokens=ctx.cfg.ablation_new_tokens):
                counts.update(split_words(g))
            task.advance(len(prompts[s:s + 16]))
    return {w: counts.get(w, 0) for w in words}


def stage_agreement(ctx: Context) -> dict[str, Any]:
    import random

    from scipy.stats import spearmanr

    from ..finetune import vader_lexicon
    from .probes import WORD_REWARD_MAX, agreement

    if ctx.cfg.task != "sentiment":
        return {"skipped": "agreement with lexicon values applies to the sentiment task"}
    lex = vader_lexicon()
    n = ctx.cfg.n_agreement_words
    rng = random.Random(ctx.cfg.seed)
    split_path = ctx.root / "triples" / "word_split.json"
    trained_on = sorted({r[k]["word"] for r in _triples(ctx) for k in ("positive", "negative") if r[k].get("word")})
    if split_path.is_file():
        split = json.loads(split_path.read_text())
        heldout_pool = sorted(set(split["heldout"]) - set(trained_on))
    else:  # triples from a file or an LLM: no word was substituted, every scoreable word is held out
        from .triples import AGREEMENT_MIN_VALENCE

        split = None
        heldout_pool = sorted(w for w, v in lex.items() if w.isalpha() and abs(v) >= AGREEMENT_MIN_VALENCE
                              and w not in trained_on)
    heldout = sorted(rng.sample(heldout_pool, min(n, len(heldout_pool))))
    train_words = sorted(rng.sample(trained_on, min(n, len(trained_on))))
    if len(heldout) < 3:
        raise InputError(f"only {len(heldout)} held-out lexicon words to score; lower triples.heldout_fraction's "
                         "complement or use a larger lexicon")
    words = heldout + train_words
    pred, base = _word_predictions(ctx, words)
    true = [lex[w] for w in words]
    k = len(heldout)
    groups = {"heldout": agreement(pred[:k].tolist(), true[:k]),
              "untrained_baseline": agreement(base[:k].tolist(), true[:k])}
    if train_words:
        groups["train"] = agreement(pred[k:].tolist(), true[k:])
    counts = _generated_counts(ctx, words)
    table = [{"word": w, "lexicon": lex[w], "predicted": float(p), "untrained": float(b),
              "error": abs(float(p) - lex[w] / 5), "heldout": i < k, "generated_count": counts.get(w)}
             for i, (w, p, b) in enumerate(zip(words, pred, base, strict=True))]
    table.sort(key=lambda r: -abs(r["lexicon"]))
    freq: dict[str, Any] = {}
    if counts:
        errs = [r["error"] for r in table]
        cnts = [r["generated_count"] for r in table]
        rho, pv = spearmanr(cnts, errs) if len(set(cnts)) > 1 else (float("nan"), float("nan"))
        freq = {"spearman_error_vs_count": float(rho), "p_value": float(pv), "n_prompts": ctx.cfg.frequency_prompts,
                "new_tokens": ctx.cfg.ablation_new_tokens, "words_generated": sum(1 for c in cnts if c)}
    res = {**groups["heldout"], "groups": groups, "n_heldout": k, "n_train_words": len(train_words),
           "split": {"heldout_fraction": split["heldout_fraction"] if split else None,
                     "seed": split["seed"] if split else None,
                     "note": "agreement words are held out from the triples the probe was trained on"},
           "error_definition": f"|probe output - valence / 5| (the per-word reward, max {WORD_REWARD_MAX})",
           "frequency": freq}
    out = ctx.dir("agreement")
    write_json(out / "agreement.json", {**res, "templates": list(AGREEMENT_TEMPLATES),
                                        "words": [r for r in table if r["heldout"]],
                                        "train_words": [r for r in table if not r["heldout"]]})
    h, t0, b0 = groups["heldout"], groups.get("train"), groups["untrained_baseline"]
    ctx.log(f"  held-out words ({k}): Kendall tau {h['kendall_tau']:.3f} (p={h['p_value']:.2g}), sign accuracy "
            f"{h['sign_accuracy']:.3f}; untrained probe tau {b0['kendall_tau']:.3f}"
            + (f"; training words ({len(train_words)}): tau {t0['kendall_tau']:.3f}" if t0 else ""))
    return {k_: v for k_, v in res.items() if k_ != "groups"}


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
    for cos, layer, f in track(chosen, "labelling features", unit="features"):
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
    if explainer is None:  # the quarter of the features most correlated with the probe's output on half A
        xa, pa = x_all[label_idx].double(), pred[label_idx].double()
        xa, pa = xa - xa.mean(0), pa - pa.mean()
        corr = (xa * pa[:, None]).sum(0) / (xa.norm(dim=0) * pa.norm()).clamp_min(1e-12)
        cols = {offsets[r["layer"]] + r["feature"]: r for r in feats}
        ranked = sorted(cols, key=lambda c: -abs(float(corr[c])))
        for c in ranked[: max(1, len(ranked) // 4)]:
            cols[c]["related"] = True
        label_note = ("no explainer configured: SELF-CONSISTENCY CHECK, not the study's Table 7. The top quarter "
                      "of the features by |correlation with the probe's output| on one half of the examples are "
                      "labelled related; the firing rates are measured on the other half")
    else:
        label_note = f"labels from {explainer.name}; firing rates measured on every example"
    related = [r for r in feats if r["related"]]
    avg_strong = float(fires[strong].float().mean())
    freq = {"related_firing_rate_strong": (sum(r["firing_rate_strong"] for r in related) / len(related)
                                           if related else None),
            "related_firing_rate_all": (sum(r["firing_rate_all"] for r in related) / len(related)
                                        if related else None),
            "average_feature_firing_rate_strong": avg_strong,
            "average_feature_firing_rate_all": float(fires.float().mean()),
            "self_consistency": explainer is None, "n_examples_measured": len(measure_idx)}
    # ablation of the related features during generation, scored with the lexicon reward, beside the ablation
    # of as many random features per layer (the baseline any effect is read against)
    prompts = imdb_prefixes(cfg.data, cfg.ablation_prompts) if cfg.data else []
    ablation: dict[str, Any] = {"n_prompts": len(prompts)}
    if prompts:
        def mean_reward(which: dict[int, list[int]] | None = None, what: str = "none ablated") -> float:
            from contextlib import ExitStack

            with ExitStack() as stack:
                for layer, fs in (which or {}).items():
                    stack.enter_context(FeatureIntervention(tuned, saes[layer], saes[layer].cfg.hook_point,
                                                            ablate=fs))
                with progress_task(f"ablation generations ({what})", total=len(prompts), unit="prompts") as task:
                    gens = []
                    for s in range(0, len(prompts), 16):
                        gens += tuned.generate_text(prompts[s:s + 16], max_new_tokens=cfg.ablation_new_tokens)
                        task.advance(len(prompts[s:s + 16]))
            return sum(lexicon_reward(g) for g in gens) / len(gens)

        ablation["reward_before"] = mean_reward()
        if related:
            chosen_by_layer: dict[int, list[int]] = {}
            for r in related:
                chosen_by_layer.setdefault(r["layer"], []).append(r["feature"])
            g = torch.Generator().manual_seed(cfg.seed + 1)
            random_by_layer = {}
            for layer, fs in chosen_by_layer.items():
                pool = [f for f in range(saes[layer].cfg.d_sae) if f not in fs]
                pick = torch.randperm(len(pool), generator=g)[: len(fs)].tolist()
                random_by_layer[layer] = sorted(pool[i] for i in pick)
            ablation["reward_after"] = mean_reward(chosen_by_layer, "related features ablated")
            ablation["reward_after_random"] = mean_reward(random_by_layer, "random features ablated")
            ablation["ablated"] = [[r["layer"], r["feature"]] for r in related]
            ablation["random_ablated"] = [[layer, f] for layer, fs in random_by_layer.items() for f in fs]
    out = ctx.dir("features")
    summary = {"label_note": label_note, "frequency": freq, "ablation": ablation, "n_features": len(feats),
               "n_related": len(related)}
    write_json(out / "features.json", {**summary, "features": feats})
    ctx.log(f"  {len(related)}/{len(feats)} features labelled related; ablation reward "
            f"{ablation.get('reward_before', float('nan')):.3f} -> {ablation.get('reward_after', float('nan')):.3f} "
            f"(as many random features: {ablation.get('reward_after_random', float('nan')):.3f})")
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


def _metrics_line(d: dict[str, Any]) -> str:
    """``{'step': 20, 'kl': 0.0234...}`` as ``step 20, kl 0.0234`` for a log line."""
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def run_stage(cfg: LFPConfig, stage: str, *, log: Log = progress_info, ctx: Context | None = None
              ) -> dict[str, Any]:
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


def run_pipeline(cfg: LFPConfig, *, force: bool = False, log: Log = progress_info, until: str | None = None
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
