"""Comparison jobs: vectors across layers and models, layer-selection metrics, vocabulary projections,
parameter divergence. Each computes with :mod:`actlab.analysis` (pure tensor math), writes ``<name>.json``
(with a ``kind``) and draws ``<name>*.png`` with :mod:`actlab.report.figures`, in a run folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..analysis import (
    check_comparable,
    cross_model_cosine,
    direction_dots,
    layer_cosine_matrix,
    layer_metrics,
    parameter_divergence,
    pca_2d,
)
from ..analysis import vocab_projection as vocab_projection_fn
from ..analysis.divergence import RANK_BY
from ..errors import InputError
from ..hooks.points import parse_layers
from ..report.figures import cross_model_plot, divergence_plot, layer_cosine_heatmap, layer_metrics_plot, pca_plot
from ..runs import Run, write_json
from .common import ModelLike, VectorLike, as_model, as_vector, name_of


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)[:60]


def vector_comparison(out: str | os.PathLike[str], vectors: Sequence[VectorLike], labels: Sequence[str] = (), *,
                      versus: Sequence[VectorLike] = (), versus_labels: Sequence[str] = (), force: bool = False
                      ) -> dict[str, Any]:
    """Layer x layer heatmaps per vector; with ``versus`` (same behaviours, second model, paired by order):
    per-layer cross-model cosines in one plot; and a normalised PCA of every layer of every vector."""
    out = Path(out)
    if not vectors:
        raise InputError("no vectors to compare")
    if versus and len(versus) != len(vectors):
        raise InputError(f"{len(vectors)} vectors but {len(versus)} to compare them with; pair them one to one")
    vs, other = [as_vector(v) for v in vectors], [as_vector(v) for v in versus]
    labels = list(labels) or [Path(str(v)).stem if not hasattr(v, "vectors") else f"vector{k}"
                              for k, v in enumerate(vectors)]
    versus_labels = list(versus_labels) or [Path(str(v)).stem if not hasattr(v, "vectors") else f"versus{k}"
                                            for k, v in enumerate(versus)]
    everything, names = [*vs, *other], [*labels, *versus_labels]
    config = {"vectors": [name_of(v) for v in vectors], "versus": [name_of(v) for v in versus], "labels": names,
              "force": force}
    with Run(out, "compare vectors", config) as run:
        differences = check_comparable(everything, names, force=force,
                                       keys=("point", "d", "n_layers", "model_family", "positions"))
        result: dict[str, Any] = {"kind": "vector_comparison", "vectors": names, "forced_differences": differences,
                                  "layer_cosine": {}, "cross_model": {}}
        for v, name in zip(everything, names, strict=True):
            mat = layer_cosine_matrix(v)
            result["layer_cosine"][name] = {"layers": v.layers,
                                            "matrix": [[round(float(x), 6) for x in r] for r in mat]}
            layer_cosine_heatmap(mat.numpy(), v.layers, f"{name}: cosine between layers",
                                 out / f"vector_comparison_layers_{_slug(name)}.png")
        if other:
            for a, b, la, lb in zip(vs, other, labels, versus_labels, strict=True):
                result["cross_model"][f"{la} vs {lb}"] = cross_model_cosine(a, b, force=force)
            cross_model_plot(result["cross_model"], out / "vector_comparison_cross_model.png")
        model_of = [str(v.meta.get("model", name)) for v, name in zip(everything, names, strict=True)]
        tensors, groups, layers = [], [], []
        for v, name, model in zip(everything, names, model_of, strict=True):
            for k in v.layers:
                tensors.append(v[k])
                groups.append(f"{model} ({name})" if len(set(model_of)) > 1 else name)
                layers.append(k)
        if len(tensors) >= 2:
            proj = pca_2d(tensors, groups, layers)
            result["pca"] = {"normalisation": proj.normalisation, "explained": proj.explained,
                             "points": [{"group": g, "layer": k, "x": float(x), "y": float(y)}
                                        for g, k, (x, y) in zip(groups, layers, proj.coords.tolist(), strict=True)]}
            pca_plot(proj, out / "vector_comparison_pca.png")
        write_json(out / "vector_comparison.json", result)
        run.results = {"cross_model": result["cross_model"]}
    return result


def contrast_prompts(model: ModelLike, *, positive: str | os.PathLike[str] | None = None,
                     negative: str | os.PathLike[str] | None = None, pairs: str | os.PathLike[str] | None = None,
                     ab: str | os.PathLike[str] | None = None, limit: int | None = None
                     ) -> tuple[list[str], list[str]]:
    """Two contrastive prompt sets from files: instruction lists (``positive`` + ``negative``), contrastive
    pairs, or A/B items (prompts ending in the matching / the other answer, chat template when there is one)."""
    from ..data import load_ab, load_instructions, load_pairs
    from ..steering import resolve_style
    from ..steering.prompts import with_answer

    if pairs:
        ps = load_pairs(pairs, limit=limit)
        return [p.positive for p in ps], [p.negative for p in ps]
    if ab:
        m = as_model(model)
        style = resolve_style(m)
        items = load_ab(ab, limit=limit)
        return ([with_answer(m, it.question, it.matching, style) for it in items],
                [with_answer(m, it.question, it.not_matching, style) for it in items])
    if positive and negative:
        return load_instructions(positive, limit=limit), load_instructions(negative, limit=limit)
    raise InputError("give positive and negative instruction files, or pairs, or A/B items")


def layer_selection(model: ModelLike, positive: Sequence[str], negative: Sequence[str], out: str | os.PathLike[str],
                    *, streams: Sequence[str] = ("resid_pre", "resid_mid"), positions: str = "last",
                    batch_size: int = 16, top_k: int = 5, progress: Callable[[int], None] | None = None
                    ) -> dict[str, Any]:
    """Layer-selection metrics from two contrastive prompt sets and the recommended layers."""
    m = as_model(model)
    config = {"model": name_of(model), "n_positive": len(positive), "n_negative": len(negative),
              "streams": list(streams), "positions": positions, "top_k": top_k}
    with Run(out, "layers", config) as run:
        lm = layer_metrics(m, positive, negative, streams=streams, positions=positions, batch_size=batch_size,
                           top=top_k, progress=progress)
        result = {"kind": "layer_metrics", "model": m.name, "n_positive": len(positive),
                  "n_negative": len(negative), **lm.to_dict()}
        layer_metrics_plot(lm, Path(out) / "layer_metrics.png")
        write_json(Path(out) / "layer_metrics.json", result)
        run.results = {"recommended": lm.recommended}
    return result


def vocab_projection(model: ModelLike, vector: VectorLike, out: str | os.PathLike[str], *,
                     layers: str | Iterable[int] | None = None, top_k: int = 10, prompts: Sequence[str] = (),
                     dots_layer: int | None = None, max_new_tokens: int = 24, chat: bool = False) -> dict[str, Any]:
    """Top positive and negative tokens of a direction per layer; with ``prompts``, its dot product with the
    activations of generated tokens."""
    m, vec = as_model(model), as_vector(vector)
    vec.check_fits(m)
    lay = parse_layers(layers, m.n_layers)
    config = {"model": name_of(model), "vector": name_of(vector), "layers": lay, "top_k": top_k,
              "prompts": list(prompts)}
    with Run(out, "project-vocab", config):
        proj = vocab_projection_fn(m, vec, layers=lay, k=top_k)
        rows = [{"layer": layer, "positive": ", ".join(repr(t) for t, _ in v["positive"]),
                 "negative": ", ".join(repr(t) for t, _ in v["negative"])} for layer, v in proj.items()]
        result: dict[str, Any] = {"kind": "vocab_projection", "model": m.name, "point": vec.point, "k": top_k,
                                  "layers": rows, "scores": {str(k_): v for k_, v in proj.items()}}
        write_json(Path(out) / "vocab_projection.json", result)
        if prompts:
            layer = dots_layer if dots_layer is not None else (lay or vec.layers)[0]
            dots = direction_dots(m, vec[layer], prompts, layer=layer, point=vec.point,
                                  max_new_tokens=max_new_tokens, chat=chat)
            write_json(Path(out) / "direction_dots.json", {"kind": "direction_dots", "model": m.name,
                                                           "layer": layer, "results": dots})
            result["dots"] = dots
    return result


def write_divergence(out: str | os.PathLike[str], a: Any, b: Any, *, top_k: int = 5, rank_by: str = "layer"
                     ) -> dict[str, Any]:
    """Compute the parameter divergence of two loaded models and write ``divergence.json`` + ``.png``."""
    div = parameter_divergence(a, b)
    top = div.top_layers(top_k, rank_by=rank_by)
    result = {"kind": "divergence", "model_a": a.name, "model_b": b.name, "top_k": top_k, "rank_by": rank_by,
              **div.to_dict(), "top_layers": top,
              "rule": f"the {top_k} layers with the largest L2 norm of the difference of their "
                      f"{'parameters' if rank_by == 'layer' else rank_by + ' parameters'}; unchanged layers are "
                      "never listed"}
    divergence_plot(div, Path(out) / "divergence.png", top_k=top_k, rank_by=rank_by,
                    title=f"parameter divergence per layer: {a.name} vs {b.name}")
    write_json(Path(out) / "divergence.json", result)
    return result


def diverge(model_a: ModelLike, model_b: ModelLike, out: str | os.PathLike[str], *, top_k: int = 5,
            rank_by: str = "layer") -> dict[str, Any]:
    """Per-layer parameter divergence between two checkpoints, in a run folder."""
    if rank_by not in RANK_BY:
        raise InputError(f"unknown ranking {rank_by!r}; valid: {', '.join(RANK_BY)}")
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    a = as_model(model_a, validate=False)
    b = as_model(model_b, validate=False)
    with Run(out, "diverge", {"model_a": name_of(model_a), "model_b": name_of(model_b), "top_k": top_k,
                              "rank_by": rank_by}) as run:
        result = write_divergence(out, a, b, top_k=top_k, rank_by=rank_by)
        run.results = {"top_layers": result["top_layers"]}
    return result
