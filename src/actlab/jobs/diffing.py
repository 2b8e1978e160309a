"""``actlab diff crosscoder``: what did fine-tuning change? One crosscoder over a base and a tuned model's
activations of the same tokens, trained, classified and written to a run folder (see docs/diffing.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..parallel import rank_and_world
from ..runs import Run, write_json
from .common import ModelLike, TextsLike, as_model, as_texts, name_of

DEFAULTS = {"expansion": 8, "k": 32, "steps": 2000, "batch_size": 1024, "lr": 1e-3, "l1": 1.0}


def _points(m: Any, point: str | None) -> str:
    return point or f"blocks.{m.n_layers // 2}.resid_post"


def crosscoder(base: ModelLike, tuned: ModelLike, data: TextsLike, out: str | os.PathLike[str], *,
               point: str | None = None, tuned_point: str | None = None, limit: int | None = 400,
               max_length: int = 128, architecture: str = "batchtopk", expansion: int = DEFAULTS["expansion"],
               k: int = DEFAULTS["k"], l1: float = DEFAULTS["l1"], steps: int = DEFAULTS["steps"],
               batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"], seed: int = 0,
               checkpoint_every: int | None = None, eval_batches: int = 16, dashboards: int = 8,
               thresholds: Any = None, overwrite: bool = False) -> dict[str, Any]:
    """Cache both models' activations of ``data`` (each model's middle-layer ``resid_post`` unless ``point``
    names another), train a crosscoder on them (resumable; data-parallel under torchrun), and write
    ``latents.json`` (every latent's decoder norms, relative norm difference, class, decoder cosine, firing
    frequency and, for model-specific latents, latent scaling), figures and feature pages of the model-specific
    latents. Returns the summary."""
    from ..crosscoder import CrosscoderConfig, PairedReader, analyse
    from ..sae import TrainConfig, cache_activations
    from ..sae.train import skip, train_saes

    texts = as_texts(data, limit=limit)
    mb, mt = as_model(base), as_model(tuned)
    pb, pt = _points(mb, point), _points(mt, tuned_point or point)
    for m, p in ((mb, pb), (mt, pt)):
        if len(m.parse_points(p)) != 1:
            raise InputError(f"a crosscoder reads one hook point per model; {p!r} names several")
    out = Path(out)
    rank, _ = rank_and_world()
    config = {"base": name_of(base), "tuned": name_of(tuned), "data": name_of(data), "points": [pb, pt],
              "limit": limit, "max_length": max_length, "architecture": architecture, "expansion": expansion,
              "k": k, "l1": l1, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(Run(out, "diff crosscoder", config, seed=seed)) if rank == 0 else None
        n_held = len(texts) // 10 if len(texts) >= 20 else 0  # a tenth of the texts is held out for the analysis
        train_texts, held_texts = (texts[:-n_held], texts[-n_held:]) if n_held else (texts, [])
        names = [mb.parse_points(pb)[0].name, mt.parse_points(pt)[0].name]

        def paired(split: str, part: list[str]) -> PairedReader:
            caches = [out / "cache" / f"base{split}", out / "cache" / f"tuned{split}"]
            for m, p, c in ((mb, pb, caches[0]), (mt, pt, caches[1])):
                cache_activations(m, part, p, c, max_length=max_length, shard_tokens=16384, overwrite=overwrite)
            return PairedReader(caches, names)

        reader = paired("", train_texts)
        held_reader = paired("_held_out", held_texts) if held_texts else reader
        bs = min(batch_size, reader.n_tokens)
        cfg = CrosscoderConfig(d_ins=tuple(reader.widths), d_sae=expansion * max(reader.widths),
                               architecture=architecture, k=k if architecture == "batchtopk" else None,
                               l1_coefficient=l1, models=(mb.name, mt.name), hook_points=(pb, pt))
        tcfg = TrainConfig(steps=steps, batch_size=bs, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                           l1_warmup_steps=max(1, steps // 20) if architecture == "l1" else 0, grad_clip=1.0,
                           dead_steps=max(50, steps // 10), log_every=max(1, steps // 100))

        def make(start: int) -> Iterator[torch.Tensor]:
            return skip(reader.batches(bs, seed=seed, epochs=None), start)

        (cc,), _ = train_saes([cfg], make, tcfg, out_dir=out, job="diff crosscoder", subfolder="crosscoder",
                                    overwrite=overwrite)
        if rank != 0:
            return {}
        held = list(_take(held_reader.batches(min(bs, held_reader.n_tokens), seed=seed + 1, epochs=1),
                          eval_batches))
        result = analyse(cc, held, thresholds=thresholds)
        result.update(kind="crosscoder_latents", models=[mb.name, mt.name], points=[pb, pt],
                      config=cfg.to_dict(), train=tcfg.model_dump(mode="json"), n_texts=len(train_texts),
                      analysed_on=f"{len(held_texts)} held-out texts" if held_texts else "the training texts "
                      "(fewer than 20 texts: none held out)")
        from ..report.diffing import crosscoder_figures

        crosscoder_figures(result, out)
        if dashboards:
            result["pages"] = _pages(cc, (mb, mt), (pb, pt), texts, result, out, dashboards, max_length)
        write_json(out / "latents.json", result)
        assert run is not None
        run.results = result["summary"]
    return result["summary"]


def _pages(cc: Any, models: Any, points: Any, texts: list[str], result: dict[str, Any], out: Path, n: int,
           max_length: int) -> dict[str, str]:
    """One feature page per model-specific class: ``{class: page file name}``."""
    from ..crosscoder.dashboards import latent_dashboards
    from ..report.features import feature_page

    pages = {}
    for name, dash in latent_dashboards(cc, models, points, texts, result, n=n, max_length=max_length).items():
        stem = name.replace("-", "_") + "_latents"
        write_json(out / f"{stem}.json", dash)
        feature_page(dash, out / f"{stem}.html", title=dash["dictionary"])
        pages[name] = f"{stem}.html"
    return pages


def _take(it: Iterator[torch.Tensor], n: int) -> Iterator[torch.Tensor]:
    for i, x in enumerate(it):
        if i >= n:
            return
        yield x
