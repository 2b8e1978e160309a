"""SAE jobs: cache activations, train dictionaries, evaluate them, compare two, find top-activating contexts."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data.texts import read_texts
from ..errors import InputError
from ..hooks.points import HookPoint
from ..report.sae import density_histogram, training_curves
from ..runs import Run, write_json
from ..sae import CacheReader, cache_activations, downstream_loss, load_sae, overlap, reconstruction_metrics
from ..sae.dashboard import feature_dashboards, neuronpedia_export
from ..sae.metrics import write_metrics
from ..sae.runner import SAETrainResult, train_from_spec
from ..sae.spec import SAETrainSpec
from ..sae.train import rank_and_world
from .common import ModelLike, TextsLike, as_model, as_texts, name_of


def cache_acts(model: ModelLike, data: TextsLike, points: str | Sequence[str],
               out: str | os.PathLike[str], *, field: str | None = None, limit: int | None = None,
               dtype: str = "float32", max_length: int = 256, shard_tokens: int = 65536, batch_size: int = 16,
               keep_bos: bool = False, overwrite: bool = False, progress: Callable[[int], None] | None = None
               ) -> dict[str, Any]:
    """Stream a text dataset through the model and write hook-point activations (sharded, resumable)."""
    m = as_model(model)
    texts = as_texts(data, field=field, limit=limit)
    if m.context_length is not None and max_length > m.context_length:
        raise InputError(f"max_length {max_length} is beyond {m.name!r}'s context of {m.context_length} tokens")
    config = {"model": name_of(model), "data": name_of(data), "points": points, "limit": limit, "dtype": dtype,
              "max_length": max_length, "shard_tokens": shard_tokens, "batch_size": batch_size, "keep_bos": keep_bos}
    if rank_and_world()[0] != 0:  # a torchrun rank: caches its share of the texts, rank 0 writes the manifest
        return cache_activations(m, texts, points, out, dtype=dtype, batch_size=batch_size,
                                 shard_tokens=shard_tokens, max_length=max_length, keep_bos=keep_bos,
                                 overwrite=overwrite, progress=progress)
    with Run(out, "acts cache", config) as run:
        man = cache_activations(m, texts, points, out, dtype=dtype, batch_size=batch_size, shard_tokens=shard_tokens,
                                max_length=max_length, keep_bos=keep_bos, overwrite=overwrite, progress=progress)
        run.results = {"n_tokens": man["n_tokens"], "n_shards": len(man["shards"])}
    return man


def train_saes(spec: SAETrainSpec, *, model: ModelLike | None = None, resume: bool = True,
               progress: Callable[[dict[str, Any]], None] | None = None, overwrite: bool = False,
               resume_anyway: bool = False) -> SAETrainResult:
    """Train the dictionaries of ``spec`` in its run folder; rank 0 also writes metrics and figures. A finished
    or interrupted run with other settings is refused unless ``overwrite`` or ``resume_anyway``."""
    rank, _ = rank_and_world()
    m = as_model(model) if model is not None else None
    kw = {"resume": resume, "progress": progress, "overwrite": overwrite, "resume_anyway": resume_anyway}
    if rank != 0:
        return train_from_spec(spec, model=m, **kw)
    with Run(spec.out, "sae train", spec.model_dump(mode="json"), seed=spec.train.seed) as run:
        res = train_from_spec(spec, model=m, **kw)
        density_histogram(res.metrics, spec.out / "sae_metrics_density.png")
        training_curves(spec.out / "train_log.jsonl", spec.out / "sae_metrics_training.png")
        run.results = {n: {k: v for k, v in x.items() if k != "density"} for n, x in res.metrics.items()}
    return res


def evaluate_saes(saes: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                  cache: str | os.PathLike[str] | None = None, model: ModelLike | None = None,
                  data: str | os.PathLike[str] | None = None, n_texts: int = 32, max_batches: int = 16,
                  batch_size: int = 4096, max_length: int = 128) -> dict[str, dict[str, Any]]:
    """Reconstruction metrics on a cache and/or the downstream loss with each dictionary spliced in."""
    if cache is None and (model is None or data is None):
        raise InputError("give a cache and/or a model with texts (data)")
    dicts = [load_sae(p) for p in saes]
    m = as_model(model) if model is not None else None
    texts = read_texts(data, limit=n_texts) if data else []
    config = {"saes": [str(p) for p in saes], "cache": str(cache) if cache else None,
              "model": name_of(model) if model is not None else None, "data": str(data) if data else None,
              "n_texts": n_texts, "max_batches": max_batches, "batch_size": batch_size}
    metrics: dict[str, dict[str, Any]] = {}
    with Run(out, "sae eval", config) as run:
        for p, sae in zip(saes, dicts, strict=True):
            res: dict[str, Any] = {}
            if cache is not None:
                reader = CacheReader(cache, sae.cfg.hook_point, model=m.name if m else None)
                # a cache smaller than one batch is evaluated in one batch of everything it holds
                res.update(reconstruction_metrics(sae, reader.batches(min(batch_size, reader.n_tokens), seed=1),
                                                  max_batches=max_batches))
            if m is not None:
                _check_width(p, sae, m)
                res.update(downstream_loss(m, sae, sae.cfg.hook_point, texts, max_length=max_length))
            metrics[sae.cfg.name or Path(p).name] = res
        write_metrics(out, metrics, name="sae_eval")
        with_density = {n: x for n, x in metrics.items() if "density" in x}
        if with_density:
            density_histogram(with_density, Path(out) / "sae_eval_density.png")
        run.results = {n: {k: v for k, v in x.items() if k != "density"} for n, x in metrics.items()}
    return metrics


def _check_width(folder: Any, sae: Any, m: Any) -> None:
    """A dictionary spliced into a model must read activations of its width at its hook point."""
    from ..hooks.points import HookPoint

    if not sae.cfg.hook_point:
        raise InputError(f"dictionary {folder} records no hook point; it cannot be spliced into {m.name}")
    point = HookPoint.parse(sae.cfg.hook_point, m.n_layers)
    if point.row_width(m) != sae.cfg.d_in:
        raise InputError(f"dictionary {folder} reads {sae.cfg.d_in}-wide activations but {point.name} of {m.name} "
                         f"is {point.row_width(m)} wide; it belongs to another model")


def sae_overlap(a: str | os.PathLike[str], b: str | os.PathLike[str], out: str | os.PathLike[str], *,
                top_k: int = 20, hungarian: bool = True) -> dict[str, Any]:
    """Mean max cosine (greedy and Hungarian) between two dictionaries' decoder directions."""
    with Run(out, "sae overlap", {"a": str(a), "b": str(b), "top_k": top_k, "hungarian": hungarian}):
        res = overlap(load_sae(a), load_sae(b), top=top_k, hungarian=hungarian)
        write_json(Path(out) / "overlap.json", {"kind": "sae_overlap", "a": str(a), "b": str(b), **res})
    return res


def top_examples(sae: str | os.PathLike[str] | Any, model: ModelLike, data: TextsLike,
                 out: str | os.PathLike[str], *, features: Sequence[int] | None = None, top_k_features: int = 16,
                 contexts: int = 8, limit: int = 200, max_length: int = 128, rank_by: str = "max",
                 explanations: Mapping[int, str] | None = None) -> dict[str, Any]:
    """Feature dashboards (the most active features unless ``features`` is given): ``top_examples.json``
    (statistics, histograms, logit effects, contexts with per-token activations), ``top_examples.html`` (an
    offline sae_vis-style page) and ``neuronpedia.json`` (the same with Neuronpedia's batch field names)."""
    from ..report.features import feature_page

    m = as_model(model)
    d = load_sae(sae) if isinstance(sae, (str, os.PathLike)) else sae
    sae = d.origin.get("folder", sae) if isinstance(getattr(d, "origin", None), dict) else sae
    _check_width(sae, d, m)
    texts = as_texts(data, limit=limit)
    config = {"sae": str(sae), "model": name_of(model), "data": name_of(data), "features": list(features or []),
              "top_k_features": top_k_features, "contexts": contexts, "limit": limit, "max_length": max_length,
              "rank_by": rank_by}
    with Run(out, "sae top-examples", config) as run:
        dash = feature_dashboards(m, d, texts, features=features, n_features=top_k_features, rank_by=rank_by,
                                  contexts=contexts, max_length=max_length, explanations=explanations)
        dash["sae"] = str(sae)
        write_json(Path(out) / "top_examples.json", dash)
        layer = HookPoint.parse(d.cfg.hook_point, m.n_layers).layer
        write_json(Path(out) / "neuronpedia.json", neuronpedia_export(
            dash, model_id=m.name, layer=layer if layer is not None else d.cfg.hook_point, sae_set=d.cfg.name))
        feature_page(dash, Path(out) / "top_examples.html",
                     title=f"features of {d.cfg.name} at {d.cfg.hook_point} ({m.name})")
        run.results = {"features": len(dash["features"]), "tokens": dash["n_tokens"]}
    return dash
