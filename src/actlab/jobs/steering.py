"""Steering jobs: extract a vector, steered generations, the A/B sweep, weight orthogonalisation, the
refusal-direction pipeline."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import ABItem, load_ab, load_instructions, load_pairs
from ..errors import InputError
from ..hooks.points import parse_layers
from ..parallel import rank_and_world
from ..progress import info as progress_info
from ..runs import Run, write_json
from ..steering import (
    contrast_from_ab,
    contrast_from_instructions,
    contrast_from_pairs,
    orthogonalize,
    resolve_style,
)
from ..steering.ablation import orthogonalization_record
from ..steering.evaluate import SweepResult, ab_sweep, steered_generations
from ..steering.extraction import extract_methods
from ..steering.prompts import PromptStyle, format_prompt
from ..steering.refusal import RefusalConfig, RefusalResult, refusal_pipeline
from ..steering.vector import SteeringVector
from .common import ModelLike, VectorLike, as_model, as_vector, name_of

FORMATS = ("ab", "pairs", "instructions")
DEFAULT_READ = {"ab": "answer", "pairs": "mean", "instructions": "eoi"}


@dataclass
class ContrastData:
    """A contrastive dataset read from its files, before any model loads (a malformed file fails in the first
    second, not after minutes of loading): A/B items, contrastive pairs, or two instruction lists."""

    format: str
    source: str
    items: list[ABItem] = field(default_factory=list)
    pairs: list[Any] = field(default_factory=list)
    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)


def read_contrast(data: str | os.PathLike[str], *, format: str = "ab", negative: str | os.PathLike[str] | None = None,
                  limit: int | None = None, min_confidence: float | None = None,
                  as_choices: bool = False) -> ContrastData:
    """Read (and check) a contrastive dataset in one of :data:`FORMATS`."""
    if format not in FORMATS:
        raise InputError(f"unknown dataset format {format!r}; valid: {', '.join(FORMATS)}")
    if format == "ab":
        return ContrastData(format, str(data), items=load_ab(data, limit=limit, min_confidence=min_confidence,
                                                             as_choices=as_choices))
    if format == "pairs":
        return ContrastData(format, str(data), pairs=load_pairs(data, limit=limit))
    if negative is None:
        raise InputError("format 'instructions' needs a negative set (e.g. the harmless instructions)")
    return ContrastData(format, str(data), positive=load_instructions(data, limit=limit),
                        negative=load_instructions(negative, limit=limit))


def extract_vector(model: ModelLike, data: str | os.PathLike[str] | ContrastData,
                   out: str | os.PathLike[str] | None = None, *,
                   format: str = "ab", negative: str | os.PathLike[str] | None = None, point: str = "resid_post",
                   layers: str | Iterable[int] | None = None, method: str = "mean_diff",
                   positions: str | None = None, chat: bool | None = None, limit: int | None = None,
                   batch_size: int = 16, progress: Callable[[int], None] | None = None,
                   min_confidence: float | None = None, as_choices: bool = False, max_length: int | None = None,
                   truncate: str = "error") -> SteeringVector:
    """Extract a steering vector from a dataset (A/B items, contrastive pairs, or two instruction lists; a file,
    or :func:`read_contrast`'s result) and save it to ``out`` when given. ``positions`` is the reading policy
    (default per format: ``answer``, ``mean``, ``eoi``)."""
    cd = data if isinstance(data, ContrastData) else read_contrast(
        data, format=format, negative=negative, limit=limit, min_confidence=min_confidence, as_choices=as_choices)
    vec = extract_vectors(model, cd, [method], point=point, layers=layers, positions=positions, chat=chat,
                          batch_size=batch_size, progress=progress, max_length=max_length, truncate=truncate)[method]
    if out is not None and rank_and_world()[0] == 0:  # under torchrun every rank has the vector; one writes it
        vec.save(out)
    return vec


def extract_vectors(model: ModelLike, cd: ContrastData, methods: Sequence[str], *, point: str = "resid_post",
                    layers: str | Iterable[int] | None = None, positions: str | None = None, chat: bool | None = None,
                    batch_size: int = 16, progress: Callable[[int], None] | None = None,
                    max_length: int | None = None, truncate: str = "error") -> dict[str, SteeringVector]:
    """Vectors by several extraction methods from one reading of the activations (see :func:`extract_vector`)."""
    m = as_model(model)
    lay = parse_layers(layers, m.n_layers)
    read = positions or DEFAULT_READ[cd.format]
    if cd.format == "ab":
        cs = contrast_from_ab(m, cd.items, resolve_style(m, chat), read)
    elif cd.format == "pairs":
        style = PromptStyle(chat=False) if not chat else resolve_style(m, True)
        cs = contrast_from_pairs(m, cd.pairs, style, read)
    else:
        style = resolve_style(m, True if chat is None else chat)
        cs = contrast_from_instructions(m, cd.positive, cd.negative, style, read)
    vecs = extract_methods(m, cs, methods, layers=lay, point=point, batch_size=batch_size, progress=progress,
                           max_length=max_length, truncate=truncate)
    for vec in vecs.values():
        vec.meta["dataset"]["file"] = cd.source
    return vecs


def generate(model: ModelLike, vector: VectorLike, prompts: Sequence[str], *, multiplier: float = 4.0,
             layers: str | Iterable[int] | None = None, positions: str = "auto", max_new_tokens: int = 40,
             chat: bool | None = None, sample: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Generations for each prompt without steering (multiplier 0) and with it, as rows
    ``{"multiplier", "prompt", "text"}``."""
    m, vec = as_model(model), as_vector(vector)
    lay = parse_layers(layers, m.n_layers) or vec.layers
    return steered_generations(m, prompts, vec, layers=lay, multipliers=[0.0, multiplier],
                               style=resolve_style(m, chat), positions=positions, max_new_tokens=max_new_tokens,
                               do_sample=sample, seed=seed)


def sweep(model: ModelLike, vector: VectorLike, data: str | os.PathLike[str] | Sequence[ABItem],
          out: str | os.PathLike[str], *, layers: str | Iterable[int] | None = None,
          multipliers: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0), positions: str | None = None,
          chat: bool | None = None, limit: int | None = None, overwrite: bool = False, batch_size: int = 16,
          progress: Callable[[int], None] | None = None, min_confidence: float | None = None,
          as_choices: bool = False) -> SweepResult:
    """p(answer matching behaviour) under steering for each layer x multiplier, in a run folder: ``run.json``,
    ``sweep.json``/``.csv`` (resumable after every batch of questions), ``sweep_heatmap.png``, ``sweep_curves.png``."""
    from ..report.figures import sweep_figures

    m, vec = as_model(model), as_vector(vector)
    items = list(data) if not isinstance(data, (str, os.PathLike)) else load_ab(
        data, limit=limit, min_confidence=min_confidence, as_choices=as_choices)
    lay = parse_layers(layers, m.n_layers) or vec.layers
    style = resolve_style(m, chat)
    config = {"model": name_of(model), "vector": name_of(vector), "data": name_of(data), "layers": lay,
              "multipliers": list(multipliers), "positions": positions, "chat": style.chat, "limit": limit,
              "batch_size": batch_size,
              "min_confidence": min_confidence, "as_choices": as_choices}
    if rank_and_world()[0] != 0:  # a torchrun rank: evaluates its share of the questions, rank 0 writes
        return ab_sweep(m, vec, items, layers=lay, multipliers=multipliers, style=style, positions=positions,
                        out_dir=out, overwrite=overwrite, batch_size=batch_size, progress=progress)
    with Run(out, "steer sweep", config) as run:  # every cell applied is recorded in run.json as it runs
        pos = positions or "auto"
        res = ab_sweep(m, vec, items, layers=lay, multipliers=multipliers, style=style, positions=positions,
                       out_dir=out, overwrite=overwrite, batch_size=batch_size, progress=progress)
        sweep_figures(res, out, title=f"{m.name}: {vec.point}, positions={pos}")
        run.results = {"cells": len(res.cells), "questions": len(items),
                       "questions_per_second": res.questions_per_second,
                       "evaluations_per_second": res.evaluations_per_second, "collapsed_cells": res.collapsed_cells()}
    return res


def ablate_weights(model: ModelLike, direction: VectorLike, out: str | os.PathLike[str], *,
                   layer: int | None = None, layers: str | Iterable[int] | None = None, prompts: Sequence[str] = (),
                   max_new_tokens: int = 40) -> dict[str, Any]:
    """Bake a directional ablation into the weights and save the model (HF format) with its ``run.json``:
    every layer (and the embeddings), or only the attention/MLP output weights of ``layers``. ``layer`` picks
    the direction from a multi-layer vector file. With ``prompts``, generations before and after (greedy)."""
    m, vec = as_model(model), as_vector(direction)
    d = vec[layer if layer is not None else vec.layers[0]]
    lay = parse_layers(layers, m.n_layers)
    with Run(out, "steer ablate", {"model": name_of(model), "direction": name_of(direction),
                                   "layer": layer if layer is not None else vec.layers[0],
                                   "layers": lay or "all"}) as run:
        run.add_interventions([orthogonalization_record(m, d, layers=lay, source=vec.provenance())])
        texts = [m.chat_prompt(p) if getattr(m.tokenizer, "chat_template", None) else p for p in prompts]
        before = m.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=False) if texts else []
        orth = orthogonalize(m, d, copy_model=False, layers=lay)
        orth.save(out)
        after = orth.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=False) if texts else []
    return {"model_dir": str(out), "generations": [{"prompt": p, "before": b, "after": a}
                                                  for p, b, a in zip(prompts, before, after, strict=True)]}


Instructions = str | os.PathLike[str] | Sequence[str]  # an instruction file, or its instructions read before


def _instructions(x: Instructions) -> list[str]:
    return load_instructions(x) if isinstance(x, (str, os.PathLike)) else list(x)


def refusal(model: ModelLike, harmful: Instructions, harmless: Instructions,
            out: str | os.PathLike[str], *, harmful_val: Instructions | None = None,
            harmless_val: Instructions | None = None, config: RefusalConfig | None = None,
            log: Callable[[str], None] = progress_info, overwrite: bool = False) -> RefusalResult:
    """The refusal-direction pipeline in a run folder (``direction.safetensors``, candidates, generations,
    ``scores.png``). Validation sets default to the training files after their first ``n_train`` items."""
    from ..report.figures import refusal_scores

    cfg = config or RefusalConfig()
    m = as_model(model)
    h_all, n_all = _instructions(harmful), _instructions(harmless)
    hv = _instructions(harmful_val) if harmful_val else h_all[cfg.n_train:]
    nv = _instructions(harmless_val) if harmless_val else n_all[cfg.n_train:]
    run_cfg = {"model": name_of(model), "harmful": name_of(harmful), "harmless": name_of(harmless),
               "harmful_val": name_of(harmful_val) if harmful_val else None,
               "harmless_val": name_of(harmless_val) if harmless_val else None,
               **{k: v for k, v in vars(cfg).items() if k != "refusal_phrases"}}
    with Run(out, "steer refusal", run_cfg, seed=cfg.seed) as run:
        res = refusal_pipeline(m, h_all, n_all, hv, nv, config=cfg, out_dir=out, log=log, overwrite=overwrite)
        refusal_scores(res.candidates, layer=res.layer, base_harmful=res.base_harmful,
                       base_harmless=res.base_harmless, kl_threshold=cfg.kl_threshold, path=Path(out) / "scores.png")
        run.results = {"layer": res.layer, "eoi_position": res.eoi_position,
                       "refusal_rate_before": res.refusal_rate_before, "refusal_rate_after": res.refusal_rate_after}
    return res


def mix_generate(model: ModelLike, source: str, point: str, prompts: Sequence[str], *, scale: float = 1.0,
                 position: int | str = -1, positions: str = "auto", chat: bool | None = None,
                 max_new_tokens: int = 40, out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Activation mixing (the decoding study): generations for ``prompts`` without and with ``scale`` times the
    ``source`` prompt's activation at ``point`` (token ``position``, default the last) added; with ``out``, a run
    folder with ``mix.json``."""
    from ..steering.apply import Mix

    m = as_model(model)
    style = resolve_style(m, chat)
    texts = [format_prompt(m, p, style) for p in prompts]
    special = style.add_special_tokens()
    mixing = Mix(source, point, scale, position=position, positions=positions, chat=style.chat)

    def run_all() -> dict[str, Any]:
        before = m.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=special)
        with m.edit(mixing) as ed:
            after = m.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=special)
        return {"kind": "mix", "model": m.name, "intervention": ed.records()[0],
                "generations": [{"prompt": p, "unmixed": b, "mixed": a}
                                for p, b, a in zip(prompts, before, after, strict=True)]}

    if out is None:
        return run_all()
    config = {"model": name_of(model), "source": source, "point": point, "scale": scale, "position": position,
              "positions": positions, "chat": style.chat, "prompts": list(prompts), "max_new_tokens": max_new_tokens}
    with Run(out, "steer mix", config):
        res = run_all()
        write_json(Path(out) / "mix.json", res)
    return res


def mix_sweep(model: ModelLike, source: str, kind: str, prompts: Sequence[str], *,
              layers: str | Iterable[int] | None = None, scale: float = 1.0, position: int | str = -1,
              positions: str = "auto", chat: bool | None = None, concept: str | int | None = None, top_k: int = 5,
              max_new_tokens: int = 24, out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Activation mixing at every layer of ``layers`` in turn (hook-point ``kind``, e.g. ``resid_post``), with
    the logit lens's layer recommendation: mix where the source's concept first decodes.

    The concept is a token (``concept``; default: the source prompt's own next-token prediction). Per layer:
    the logit lens of the activation that is mixed in (its rank and probability for the concept: where the
    source "says" it), the concept's next-token probability on each prompt with and without the mix, the share
    of mixed generations that contain it, and the generations. The recommended layer is the first whose
    mixed-in activation has the concept in its lens top ``top_k``."""
    import torch

    from ..hooks.points import HookPoint, block_kind
    from ..lens import LogitLens, resolve_target
    from ..steering.apply import Mix, record_activation

    m = as_model(model)
    block_kind(kind)
    lay = parse_layers(layers, m.n_layers) or list(range(m.n_layers))
    style = resolve_style(m, chat)
    texts = [format_prompt(m, p, style) for p in prompts]
    special = style.add_special_tokens()
    src_text = format_prompt(m, source, style)
    if concept is None:
        batch = m.tokenize(src_text, add_special_tokens=special)
        cid = int(m.last_logits(**batch)[0].argmax())
        ctok = m.tokenizer.decode([cid])
    else:
        cid, ctok = resolve_target(m, concept)
    batch = m.tokenize(texts, padding_side="left", add_special_tokens=special)

    def concept_prob() -> list[float]:
        with torch.no_grad():
            return torch.softmax(m.last_logits(**batch).float(), -1)[:, cid].tolist()

    def run_all() -> dict[str, Any]:
        base_p = concept_prob()
        unmixed = m.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=special)
        rows = []
        for layer in lay:
            pt = HookPoint(layer, kind)
            LogitLens().check(pt)
            act = record_activation(m, source, pt, reduce=position, chat=style.chat)
            lens_logits = LogitLens().logits(m, pt, act[None].to(m.device))[0].float()
            lens_p = torch.softmax(lens_logits, -1)
            rank = int((lens_logits > lens_logits[cid]).sum()) + 1
            with m.edit(Mix(source, pt, scale, position=position, positions=positions, chat=style.chat)):
                mixed_p = concept_prob()
                gens = m.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=special)
            word = ctok.strip().lower()
            rows.append({"layer": layer, "point": pt.name, "lens_rank": rank, "lens_prob": float(lens_p[cid]),
                         "lens_top": m.tokenizer.decode([int(lens_logits.argmax())]),
                         "concept_prob_unmixed": sum(base_p) / len(base_p),
                         "concept_prob_mixed": sum(mixed_p) / len(mixed_p),
                         "concept_in_generation": (sum(word in g.lower() for g in gens) / len(gens)) if word else None,
                         "generations": gens})
        first = next((r["layer"] for r in rows if r["lens_rank"] <= top_k), None)
        return {"kind": "mix_sweep", "model": m.name, "source": source, "point_kind": kind, "scale": scale,
                "position": position, "positions": positions, "chat": style.chat, "prompts": list(prompts),
                "concept": {"token": ctok, "id": cid, "given": concept is not None}, "top_k": top_k,
                "recommended_layer": first,
                "rule": f"the first layer whose mixed-in activation has the concept in its logit-lens top {top_k}",
                "unmixed": unmixed, "layers": rows}

    if out is None:
        return run_all()
    config = {"model": name_of(model), "source": source, "kind": kind, "layers": lay, "scale": scale,
              "position": position, "positions": positions, "chat": style.chat, "concept": concept,
              "top_k": top_k, "prompts": list(prompts), "max_new_tokens": max_new_tokens}
    with Run(out, "steer mix", config) as run:
        res = run_all()
        from ..report.figures import mix_sweep_plot

        mix_sweep_plot(res, Path(out) / "mix_sweep.png")
        write_json(Path(out) / "mix_sweep.json", res)
        run.results = {"recommended_layer": res["recommended_layer"], "concept": res["concept"]["token"]}
    return res
