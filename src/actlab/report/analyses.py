"""Run the comparison analyses and write their JSON + PNG into a run directory (the report renders them).

Each writer computes with :mod:`actlab.analysis` (pure tensor math) and writes ``<name>.json`` (with a
``kind``) and ``<name>*.png`` atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis import (
    check_comparable,
    cross_model_cosine,
    direction_dots,
    layer_cosine_matrix,
    layer_metrics,
    parameter_divergence,
    pca_2d,
    vocab_projection,
)
from ..errors import InputError
from ..runs import write_json
from ..steering.vector import SteeringVector
from .figures import cross_model_plot, divergence_plot, layer_cosine_heatmap, layer_metrics_plot, pca_plot

if TYPE_CHECKING:
    from ..models.model import Model


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)[:60]


def write_vector_comparison(out: str | os.PathLike[str], vectors: Sequence[SteeringVector], labels: Sequence[str],
                            *, versus: Sequence[SteeringVector] = (), versus_labels: Sequence[str] = (),
                            force: bool = False) -> dict[str, Any]:
    """Layer x layer heatmaps per vector; with ``versus`` (same behaviours, second model, paired by order):
    per-layer cross-model cosines in one plot; and a normalised PCA of every layer of every vector."""
    out = Path(out)
    if not vectors:
        raise InputError("no vectors to compare")
    if versus and len(versus) != len(vectors):
        raise InputError(f"{len(vectors)} vectors but {len(versus)} to compare them with; pair them one to one")
    everything = [*vectors, *versus]
    names = [*labels, *versus_labels]
    differences = check_comparable(everything, names, force=force,
                                   keys=("point", "d", "n_layers", "model_family", "positions"))
    result: dict[str, Any] = {"kind": "vector_comparison", "vectors": names, "forced_differences": differences,
                              "layer_cosine": {}, "cross_model": {}}
    for v, name in zip(everything, names, strict=True):
        mat = layer_cosine_matrix(v)
        result["layer_cosine"][name] = {"layers": v.layers, "matrix": [[round(float(x), 6) for x in r] for r in mat]}
        layer_cosine_heatmap(mat.numpy(), v.layers, f"{name}: cosine between layers",
                             out / f"vector_comparison_layers_{_slug(name)}.png")
    if versus:
        for a, b, la, lb in zip(vectors, versus, labels, versus_labels, strict=True):
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
    return result


def write_layer_metrics(out: str | os.PathLike[str], model: Model, positive: Sequence[str], negative: Sequence[str],
                        **kw: Any) -> dict[str, Any]:
    m = layer_metrics(model, positive, negative, **kw)
    result = {"kind": "layer_metrics", "model": model.name, "n_positive": len(positive),
              "n_negative": len(negative), **m.to_dict()}
    layer_metrics_plot(m, Path(out) / "layer_metrics.png")
    write_json(Path(out) / "layer_metrics.json", result)
    return result


def write_vocab_projection(out: str | os.PathLike[str], model: Model, vector: SteeringVector, *,
                           layers: Sequence[int] | None = None, k: int = 10, prompts: Sequence[str] = (),
                           dots_layer: int | None = None, max_new_tokens: int = 24, chat: bool = False
                           ) -> dict[str, Any]:
    vector.check_fits(model)
    proj = vocab_projection(model, vector, layers=layers, k=k)
    rows = [{"layer": layer, "positive": ", ".join(repr(t) for t, _ in v["positive"]),
             "negative": ", ".join(repr(t) for t, _ in v["negative"])} for layer, v in proj.items()]
    result: dict[str, Any] = {"kind": "vocab_projection", "model": model.name, "point": vector.point, "k": k,
                              "layers": rows, "scores": {str(k_): v for k_, v in proj.items()}}
    write_json(Path(out) / "vocab_projection.json", result)
    if prompts:
        layer = dots_layer if dots_layer is not None else (layers or vector.layers)[0]
        dots = direction_dots(model, vector[layer], prompts, layer=layer, point=vector.point,
                              max_new_tokens=max_new_tokens, chat=chat)
        write_json(Path(out) / "direction_dots.json", {"kind": "direction_dots", "model": model.name,
                                                       "layer": layer, "results": dots})
        result["dots"] = dots
    return result


def write_divergence(out: str | os.PathLike[str], a: Model, b: Model, *, top_k: int = 5) -> dict[str, Any]:
    div = parameter_divergence(a, b)
    result = {"kind": "divergence", "model_a": a.name, "model_b": b.name, "top_k": top_k,
              "top_layers": div.top_layers(top_k), **div.to_dict()}
    divergence_plot(div, Path(out) / "divergence.png", top_k=top_k,
                    title=f"parameter divergence per layer: {a.name} vs {b.name}")
    write_json(Path(out) / "divergence.json", result)
    return result
