"""The stages that make the models the rest reads: fine-tuning (RL on the lexicon reward, or DPO), the
most divergent MLP layers, and the dictionaries trained on the fine-tuned model's activations there."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ...data import imdb_prefixes, load_preferences
from ...errors import InputError
from ...finetune import train_dpo, train_rl
from ...hooks.points import HookPoint
from ...jobs.compare import write_divergence
from ...models import Model
from ...report.figures import training_history
from ...report.sae import density_histogram, training_curves
from ...sae import cache_activations
from ...sae.runner import train_from_spec
from ..outputs import Dictionaries, LayerChoice

if TYPE_CHECKING:
    from ..pipeline import Context


def stage_finetune(ctx: Context) -> dict[str, Any]:
    from ..pipeline import metrics_line
    from ..report import barely_moved

    cfg = ctx.cfg
    if cfg.tuned_model:
        return {"skipped": f"tuned_model given: {cfg.tuned_model}"}
    model = ctx.model("base")
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
    keys = ("reward", "kl") if ft.method == "rl" else ("preference_accuracy", "mean_log_ratio")
    training_history(res["history"], keys, out / "finetune.png")
    last = res["history"][-1] if res["history"] else {}
    ctx.log(f"  fine-tuned with {ft.method}: " + (metrics_line(last) if last else "nothing logged"))
    if moved := barely_moved(res["history"]):
        ctx.log(f"  warning: {moved}")
    return {"method": ft.method, "last": last}


def stage_divergence(ctx: Context) -> dict[str, Any]:
    base, tuned = ctx.model("base"), ctx.model("tuned")
    if type(base.hf) is not type(tuned.hf) or base.n_layers != tuned.n_layers:
        raise InputError(f"base and fine-tuned models have different architectures: {type(base.hf).__name__} "
                         f"({base.n_layers} layers) vs {type(tuned.hf).__name__} ({tuned.n_layers} layers)")
    out = ctx.dir("divergence")
    k = min(ctx.cfg.top_k_layers, base.n_layers)
    res = write_divergence(out, base, tuned, top_k=k, rank_by="mlp", names=(ctx.label("base"), ctx.label("tuned")))
    layers = sorted(res["top_layers"])
    if not layers:
        raise InputError("the fine-tuned model's MLP parameters equal the base model's: nothing was learned to "
                         "audit (check tuned_model / the finetune stage)")
    rule = res["rule"]
    if ctx.cfg.layers is not None:  # the study's Table 12: other layers than the most divergent ones
        bad = [i for i in ctx.cfg.layers if not 0 <= i < base.n_layers]
        if bad or not ctx.cfg.layers:
            raise InputError(f"layers {ctx.cfg.layers}: the model has layers 0..{base.n_layers - 1}")
        rule = (f"given by the config (layers: {sorted(set(ctx.cfg.layers))}), not the {k} most divergent "
                f"({layers})")
        layers = sorted(set(ctx.cfg.layers))
    LayerChoice(layers, rule, res["per_module"].get("mlp", res["per_layer"])).write(ctx.root)
    ctx.log(f"  layers: {layers} ({rule})")
    return {"layers": layers}


def stage_sae(ctx: Context) -> dict[str, Any]:
    spec = ctx.cfg.sae
    layers = ctx.read(LayerChoice, "divergence").layers
    dicts, metrics = train_dictionaries(ctx, ctx.model("tuned"), layers, ctx.dir("sae"), ctx.label("tuned"))
    Dictionaries(layers, spec.point, dicts, metrics).write(ctx.root)
    return {"layers": layers, "metrics": metrics}


def train_dictionaries(ctx: Context, model: Model, layers: list[int], out: Path, label: str
                       ) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """The config's dictionaries (``sae``) trained on ``model``'s activations at ``layers``, under ``out``
    (the activation cache in ``out/cache``, one folder per layer): per layer, each dictionary's folder and
    metrics. The sae stage runs it on the tuned model; ``features_on_base`` on the base model too."""
    spec = ctx.cfg.sae
    points = [HookPoint(i, spec.point).name for i in layers]
    cache_activations(model, ctx.texts(spec.n_texts), points, out / "cache", max_length=spec.max_length)
    dicts: dict[str, dict[str, str]] = {}
    metrics: dict[str, Any] = {}
    for i, point in zip(layers, points, strict=True):
        run_spec = spec.train_spec(cache=out / "cache", point=point, out=out / f"layer{i}")
        res = train_from_spec(run_spec)
        density_histogram(res.metrics, run_spec.out / "sae_metrics_density.png")
        training_curves(run_spec.out / "train_log.jsonl", run_spec.out / "sae_metrics_training.png")
        dicts[str(i)] = {c.name: str(run_spec.out / "saes" / c.name) for c in res.configs}
        metrics[str(i)] = {n: {k: v for k, v in x.items() if k != "density"} for n, x in res.metrics.items()}
        ctx.log(f"  {label} layer {i}: " + "; ".join(f"{n} EV {x['explained_variance']:.3f} L0 "
                                                          f"{x['l0']:.1f}" for n, x in res.metrics.items()))
    return dicts, metrics
