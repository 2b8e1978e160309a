"""Comparison jobs: vectors across layers and models, layer-selection metrics, vocabulary projections,
parameter divergence. Each computes with :mod:`actlab.analysis` (pure tensor math), writes ``<name>.json``
(with a ``kind``) and draws ``<name>*.png`` with :mod:`actlab.report.figures`, in a run folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

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
from ..data import load_ab, load_instructions, load_pairs
from ..errors import InputError
from ..hooks.points import HookPoint, parse_layers
from ..report.figures import cross_model_plot, divergence_plot, layer_cosine_heatmap, layer_metrics_plot, pca_plot
from ..runs import Run, write_json
from ..steering.vector import SteeringVector
from .common import ModelLike, VectorLike, as_model, as_vector, name_of

if TYPE_CHECKING:
    from ..models.model import Model


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
    config = {"vectors": [name_of(v) for v in vectors], "versus": [name_of(v) for v in versus],
              "labels": [*labels, *versus_labels], "force": force}
    with Run(out, "compare vectors", config) as run:
        result = _compare_vectors(out, vs, labels, other, versus_labels, force=force)
        run.results = {"cross_model": result["cross_model"]}
    return result


def _compare_vectors(out: Path, vs: Sequence[SteeringVector], labels: Sequence[str], other: Sequence[SteeringVector],
                     versus_labels: Sequence[str], *, force: bool = False) -> dict[str, Any]:
    """:func:`vector_comparison`'s computation and files, inside the caller's run."""
    everything, names = [*vs, *other], [*labels, *versus_labels]
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
    return result


def behaviour_label(path: str | os.PathLike[str]) -> str:
    """A behaviour's name from its dataset file: the folder for CAA's generic file names
    (``caa/generate/sycophancy/generate_dataset.json`` -> ``sycophancy``), else the file's stem."""
    p = Path(path)
    generic = p.stem.startswith(("generate_dataset", "test_dataset", "dataset"))
    return p.parent.name if generic and p.parent.name else p.stem


def behaviour_comparison(model_a: ModelLike, model_b: ModelLike, datasets: Sequence[str | os.PathLike[str]],
                         out: str | os.PathLike[str], *, labels: Sequence[str] = (),
                         layers: str | Iterable[int] | None = None, limit: int | None = None,
                         positions: str | None = None, point: str = "resid_post", chat: bool | None = None,
                         batch_size: int = 16, force: bool = False, overwrite: bool = False,
                         load: Callable[[ModelLike], Model] = as_model) -> dict[str, Any]:
    """Several behaviours on two models in one run (the base-vs-chat note): a mean-difference vector per
    behaviour (A/B datasets) and model in ``vectors/``, then :func:`vector_comparison`'s files (per-layer
    cross-model cosine per behaviour, layer heatmaps, normalised PCA) and ``behaviours.json``: per model and
    layer, the cosines between behaviours. One model is loaded at a time (``load``); each finished vector is
    kept and a re-run skips it (the folder's resume record)."""
    from ..analysis.similarity import cosine
    from .steering import extract_vector, read_contrast

    out = Path(out)
    if not datasets:
        raise InputError("no behaviour datasets to compare")
    labels = list(labels) or [behaviour_label(d) for d in datasets]
    if len(labels) != len(datasets):
        raise InputError(f"{len(labels)} labels for {len(datasets)} datasets; give one per dataset (or none)")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise InputError(f"two datasets are both called {dup[0]!r}; name them with --label")
    contrast = [read_contrast(d, format="ab", limit=limit) for d in datasets]  # before any model loads
    names = {"A": name_of(model_a), "B": name_of(model_b)}
    config = {"model_a": names["A"], "model_b": names["B"], "datasets": [str(d) for d in datasets],
              "labels": labels, "layers": layers if isinstance(layers, (str, type(None))) else list(layers),
              "limit": limit, "positions": positions, "point": point, "chat": chat, "force": force}
    vec_dir = out / "vectors"
    with Run(out, "compare behaviours", config) as run:
        from ..runs import Resume

        resume = Resume(out, "compare behaviours", {k: v for k, v in config.items() if k != "force"},
                        overwrite=overwrite)
        vecs: dict[str, list[SteeringVector]] = {"A": [], "B": []}
        for tag, spec in (("A", model_a), ("B", model_b)):
            m = None
            for label, cd in zip(labels, contrast, strict=True):
                path = vec_dir / f"{tag}_{_slug(label)}.safetensors"
                if resume.done(f"{tag} {label}") and path.is_file():
                    vecs[tag].append(SteeringVector.load(path))
                    continue
                m = m or load(spec)
                vec_dir.mkdir(parents=True, exist_ok=True)
                vecs[tag].append(extract_vector(m, cd, path, layers=layers, positions=positions, point=point,
                                                chat=chat, batch_size=batch_size))
                resume.mark(f"{tag} {label}")
            del m
        short_b = names["B"].rstrip("/").split("/")[-1]
        result = _compare_vectors(out, vecs["A"], labels, vecs["B"], [f"{x} ({short_b})" for x in labels],
                                  force=force)
        within: dict[str, Any] = {}
        for tag in ("A", "B"):
            common = sorted(set.intersection(*(set(v.layers) for v in vecs[tag])))
            within[names[tag]] = {str(k): [[round(cosine(a[k], b[k]), 6) for b in vecs[tag]] for a in vecs[tag]]
                                  for k in common}
        summary = {"kind": "behaviour_comparison", "models": [names["A"], names["B"]], "behaviours": labels,
                   "datasets": [str(d) for d in datasets], "n_items": [len(cd.items) for cd in contrast],
                   "cross_model": {label: result["cross_model"][f"{label} vs {label} ({short_b})"]
                                   for label in labels},
                   "between_behaviours": within,
                   "vectors": {tag: [str(vec_dir / f"{tag}_{_slug(x)}.safetensors") for x in labels]
                               for tag in ("A", "B")}}
        write_json(out / "behaviours.json", summary)
        run.results = {"cross_model_mean": {label: sum(c.values()) / len(c) for label, c in
                                            summary["cross_model"].items() if c}}
    return summary


@dataclass
class PromptSets:
    """Two contrastive prompt sets as read from their files (before any model loads): instruction lists, pairs
    or A/B items."""

    kind: str  # "instructions", "pairs" or "ab"
    positive: list[Any]
    negative: list[Any]


def read_prompt_sets(*, positive: str | os.PathLike[str] | None = None, negative: str | os.PathLike[str] | None = None,
                     pairs: str | os.PathLike[str] | None = None, ab: str | os.PathLike[str] | None = None,
                     limit: int | None = None) -> PromptSets:
    """Read (and check) the files :func:`contrast_prompts` formats."""
    if pairs:
        ps = load_pairs(pairs, limit=limit)
        return PromptSets("pairs", [p.positive for p in ps], [p.negative for p in ps])
    if ab:
        items = load_ab(ab, limit=limit)
        return PromptSets("ab", items, items)
    if positive and negative:
        return PromptSets("instructions", load_instructions(positive, limit=limit),
                          load_instructions(negative, limit=limit))
    raise InputError("give positive and negative instruction files, or pairs, or A/B items")


def contrast_prompts(model: ModelLike, *, positive: str | os.PathLike[str] | None = None,
                     negative: str | os.PathLike[str] | None = None, pairs: str | os.PathLike[str] | None = None,
                     ab: str | os.PathLike[str] | None = None, limit: int | None = None,
                     chat: bool | None = None, sets: PromptSets | None = None) -> tuple[list[str], list[str], bool]:
    """Two contrastive prompt sets from files (or ``sets`` read earlier by :func:`read_prompt_sets`): instruction
    lists (``positive`` + ``negative``), contrastive pairs (used as they are unless ``chat=True``), or A/B items
    (prompts ending in the matching / the other answer). Instruction lists and A/B items go through the chat
    template when the tokenizer has one (``chat=None``), so ``positions='last'`` reads the last token of the
    templated prompt, as the study does. The third value says whether the tokenizer should add its special
    tokens (not to templated text)."""
    from ..steering import resolve_style
    from ..steering.prompts import format_prompt, with_answer

    sets = sets or read_prompt_sets(positive=positive, negative=negative, pairs=pairs, ab=ab, limit=limit)
    if sets.kind == "pairs" and not chat:
        return list(sets.positive), list(sets.negative), True
    m = as_model(model)
    style = resolve_style(m, True if sets.kind == "pairs" else chat)
    if sets.kind == "ab":
        return ([with_answer(m, it.question, it.matching, style) for it in sets.positive],
                [with_answer(m, it.question, it.not_matching, style) for it in sets.negative],
                style.add_special_tokens())
    return ([format_prompt(m, t, style) for t in sets.positive], [format_prompt(m, t, style) for t in sets.negative],
            style.add_special_tokens())


def layer_selection(model: ModelLike, positive: Sequence[str], negative: Sequence[str], out: str | os.PathLike[str],
                    *, streams: Sequence[str] = ("resid_pre", "resid_mid"), positions: str = "last",
                    batch_size: int = 16, top_k: int = 5, progress: Callable[[int], None] | None = None,
                    add_special_tokens: bool = True, pca_layers: str | Iterable[int] | None = None,
                    untangle: bool = False) -> dict[str, Any]:
    """Layer-selection metrics from two contrastive prompt sets and the recommended layers
    (``add_special_tokens=False`` for prompts that already hold them, e.g. chat-templated ones). With
    ``pca_layers``, also the PCA of the two sets' activations at those layers (``dataset_pca.json`` + figure):
    the dataset seen layer by layer, coloured by class. With ``untangle``, per layer the held-out accuracy of a
    linear probe, pairwise distances and their growth with depth (``untangling.json`` + figure)."""
    m = as_model(model)
    config = {"model": name_of(model), "n_positive": len(positive), "n_negative": len(negative),
              "streams": list(streams), "positions": positions, "top_k": top_k,
              "pca_layers": parse_layers(pca_layers, m.n_layers) if pca_layers is not None else None,
              "untangle": untangle}
    with Run(out, "layers", config) as run:
        lm = layer_metrics(m, positive, negative, streams=streams, positions=positions, batch_size=batch_size,
                           top=top_k, progress=progress, add_special_tokens=add_special_tokens)
        result = {"kind": "layer_metrics", "model": m.name, "n_positive": len(positive),
                  "n_negative": len(negative), **lm.to_dict()}
        layer_metrics_plot(lm, Path(out) / "layer_metrics.png")
        write_json(Path(out) / "layer_metrics.json", result)
        run.results = {"recommended": lm.recommended}
        if config["pca_layers"]:
            result["pca"] = dataset_pca(m, positive, negative, out, layers=config["pca_layers"],
                                        stream=lm.streams[-1], positions=positions, batch_size=batch_size,
                                        add_special_tokens=add_special_tokens)
        if untangle:
            result["untangling"] = untangling_job(m, positive, negative, out, stream=lm.streams[-1],
                                                  positions=positions, batch_size=batch_size,
                                                  add_special_tokens=add_special_tokens)
    return result


def _item_acts(m: Model, texts: Sequence[str], names: Sequence[str], positions: str, batch_size: int,
               add_special_tokens: bool) -> dict[str, torch.Tensor]:
    """One row per item at each point: the last token's activation, or (positions='tokens') the mean over its
    tokens."""
    pos = "last" if positions == "last" else "all"
    batch = m.tokenize(list(texts), add_special_tokens=add_special_tokens)
    acts = m.activations(batch, list(names), pos, batch_size=batch_size, dtype=torch.float32)
    n_tok = batch["attention_mask"].sum(1, keepdim=True).float()  # "all" is zero-padded: a true mean
    return {n: acts[n] if pos == "last" else acts[n].sum(1) / n_tok for n in names}


def untangling_job(model: ModelLike, positive: Sequence[str], negative: Sequence[str], out: str | os.PathLike[str],
                   *, stream: str = "resid_mid", positions: str = "last", batch_size: int = 16,
                   add_special_tokens: bool = True, test_fraction: float = 0.25, seed: int = 0) -> dict[str, Any]:
    """Every layer's probe accuracy, distances and growth fits (``analysis.untangling``), written as
    ``untangling.json`` and ``untangling.png``."""
    from ..analysis.untangling import untangling
    from ..report.figures import untangling_plot

    m = as_model(model)
    layers = list(range(m.n_layers))
    names = [HookPoint(i, stream).name for i in layers]
    ap = _item_acts(m, positive, names, positions, batch_size, add_special_tokens)
    an = _item_acts(m, negative, names, positions, batch_size, add_special_tokens)
    res = untangling(layers, [ap[n] for n in names], [an[n] for n in names], test_fraction=test_fraction,
                     seed=seed)
    result = {"kind": "untangling", "model": m.name, "stream": stream, "positions": positions,
              "n_positive": len(positive), "n_negative": len(negative), **res}
    untangling_plot(result, Path(out) / "untangling.png")
    write_json(Path(out) / "untangling.json", result)
    return result


def dataset_pca(model: ModelLike, positive: Sequence[str], negative: Sequence[str], out: str | os.PathLike[str],
                *, layers: Sequence[int], stream: str = "resid_mid", positions: str = "last", batch_size: int = 16,
                add_special_tokens: bool = True) -> dict[str, Any]:
    """PCA per layer of the two sets' activations (``analysis.pca.class_pca``), written as ``dataset_pca.json``
    and ``dataset_pca.png``."""
    from ..analysis.pca import class_pca
    from ..report.figures import dataset_pca_plot

    m = as_model(model)
    names = [HookPoint(i, stream).name for i in layers]
    ap = _item_acts(m, positive, names, positions, batch_size, add_special_tokens)
    an = _item_acts(m, negative, names, positions, batch_size, add_special_tokens)
    per_layer = [{"layer": i, "point": n, **class_pca(ap[n], an[n])} for i, n in zip(layers, names, strict=True)]
    result = {"kind": "dataset_pca", "model": m.name, "stream": stream, "positions": positions,
              "n_positive": len(positive), "n_negative": len(negative), "layers": per_layer,
              "normalisation": "centred on the pooled items, not scaled",
              "separation": "|c_P - c_N| / sqrt((s_P^2 + s_N^2) / 2) in the plane of the first two components"}
    dataset_pca_plot(result, Path(out) / "dataset_pca.png")
    write_json(Path(out) / "dataset_pca.json", result)
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


def write_divergence(out: str | os.PathLike[str], a: Any, b: Any, *, top_k: int = 5, rank_by: str = "layer",
                     names: tuple[str, str] | None = None) -> dict[str, Any]:
    """Compute the parameter divergence of two loaded models and write ``divergence.json`` + ``.png``
    (``names``: how to call the two models there, by default their names)."""
    div = parameter_divergence(a, b)
    top = div.top_layers(top_k, rank_by=rank_by)
    name_a, name_b = names or (a.name, b.name)
    result = {"kind": "divergence", "model_a": name_a, "model_b": name_b, "top_k": top_k, "rank_by": rank_by,
              **div.to_dict(), "top_layers": top,
              "rule": f"the {top_k} layers with the largest L2 norm of the difference of their "
                      f"{'parameters' if rank_by == 'layer' else rank_by + ' parameters'}; unchanged layers are "
                      "never listed"}
    divergence_plot(div, Path(out) / "divergence.png", top_k=top_k, rank_by=rank_by,
                    title=f"parameter divergence per layer: {name_a} vs {name_b}")
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


def prompting(model: ModelLike, instruction: str, prompts: Sequence[str], out: str | os.PathLike[str], *,
              layers: str | Iterable[int] | None = None, kind: str = "resid_post", chat: bool | None = None,
              train_fraction: float = 0.5, seed: int = 0, batch_size: int = 16, kl: bool = True,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Does the instruction add to the residual stream or rotate it? (``analysis.prompting``)"""
    from ..analysis.prompting import addition_vs_rotation
    from ..hooks.points import layer_list
    from ..report.figures import prompting_plot

    m = as_model(model)
    lay = layer_list(layers, m.n_layers)
    config = {"model": name_of(model), "instruction": instruction, "n_prompts": len(prompts), "layers": lay,
              "kind": kind, "chat": chat, "train_fraction": train_fraction, "seed": seed, "kl": kl}
    with Run(out, "compare prompting", config, seed=seed) as run:
        res = addition_vs_rotation(m, instruction, prompts, layers=lay, kind=kind, chat=chat,
                                   train_fraction=train_fraction, seed=seed, batch_size=batch_size, kl=kl,
                                   progress=progress)
        fields = res.to_dict()  # its own `kind` is the hook-point kind: kept as point_kind, not the result kind
        result = {"kind": "prompting", "model": m.name, "point_kind": fields.pop("kind"), **fields}
        write_json(Path(out) / "prompting.json", result)
        prompting_plot(res.per_layer, Path(out) / "prompting.png",
                       title=f"{m.name}: '{instruction[:60]}' - addition vs rotation ({kind})")
        best = min(res.per_layer, key=lambda r: r["residual_error_rotate"] - r["residual_error_add"])
        run.results = {"layers_where_rotation_fits_better": [r["layer"] for r in res.per_layer
                                                             if r["residual_error_rotate"] < r["residual_error_add"]],
                       "most_rotation_like_layer": best["layer"]}
    return result


def curvature(model: ModelLike, vector: VectorLike, out: str | os.PathLike[str], *, layer: int | None = None,
              multipliers: Sequence[float] = (-4.0, -2.0, 0.0, 2.0, 4.0), texts: Sequence[str] = (),
              ab: str | os.PathLike[str] | Sequence[Any] | None = None, limit: int | None = 32,
              max_length: int = 64,
              batch_size: int = 8) -> dict[str, Any]:
    """Second derivative of the next-token loss (``texts``) or of mean log p(matching answer) (``ab`` items)
    along a steering vector, at each multiplier (autograd; ``analysis.curvature``)."""
    from ..analysis.curvature import answer_logprob_metric, direction_derivatives, lm_loss_metric
    from ..data import load_ab
    from ..report.figures import curvature_plot
    from ..steering import resolve_style
    from ..steering.evaluate import ab_prompts

    m, vec = as_model(model), as_vector(vector)
    vec.check_fits(m)
    lay = layer if layer is not None else vec.layers[0]
    point = HookPoint(lay, vec.point)
    if (ab is None) == (not texts):
        raise InputError("give either texts (next-token loss) or A/B items (log p(matching answer))")
    if ab is not None:
        items = load_ab(ab, limit=limit) if isinstance(ab, (str, os.PathLike)) else list(ab)
        prompts = ab_prompts(m, items, resolve_style(m))
        metric, name = answer_logprob_metric(m, prompts, batch_size=batch_size), "log p(matching answer)"
    else:
        from ..sae.store import _token_batch

        batches = [_token_batch(m, list(texts[s:s + batch_size]), max_length)
                   for s in range(0, len(texts), batch_size)]
        metric, name = lm_loss_metric(m, batches), "next-token loss"
    config = {"model": name_of(model), "vector": name_of(vector), "point": point.name,
              "multipliers": list(multipliers), "metric": name, "ab": name_of(ab) if ab else None,
              "n_texts": len(texts), "limit": limit}
    with Run(out, "compare curvature", config) as run:
        rows = direction_derivatives(m, point, vec[lay], metric, multipliers, source=vec.provenance())
        result = {"kind": "curvature", "model": m.name, "point": point.name, "metric": name, "rows": rows,
                  "vector_norm": float(vec[lay].norm()),
                  "note": "derivatives with respect to the multiplier m of m * vector added at every position"}
        write_json(Path(out) / "curvature.json", result)
        curvature_plot(rows, Path(out) / "curvature.png", metric=name, title=f"{m.name}: {point.name}")
        run.results = {"max_abs_second_derivative": max(abs(r["second_derivative"]) for r in rows)}
    return result


MAX_SAVED_EIGENVECTOR_VALUES = 50_000_000  # k x d floats; larger parameter eigenvectors are not written


def hessian(model: ModelLike, texts: Sequence[str], out: str | os.PathLike[str], *, layer: int | None = None,
            kind: str = "resid_post", vector: VectorLike | None = None, top_k: int = 5, method: str = "lanczos",
            which: str = "LM", max_length: int = 64, batch_size: int = 8, seed: int = 0, wrt: str = "activations",
            params: str = "*", per_batch: bool = False) -> dict[str, Any]:
    """Leading eigenpairs of the Hessian of the next-token loss w.r.t. a vector added at every position of a
    layer, and (with a vector) their cosines to it; or, with ``wrt='params'``, w.r.t. the parameters whose names
    match ``params`` (``per_batch``: also each batch's own leading eigenvalues and their mean, beside the
    Hessian of all batches at once) (``analysis.curvature``)."""
    from ..analysis.curvature import LossHessian, ParamHessian, eigen_report, top_eigen
    from ..hooks.points import point as make_point
    from ..report.figures import hessian_plot
    from ..runs import write_bytes
    from ..sae.store import _token_batch

    if wrt not in ("activations", "params"):
        raise InputError(f"unknown wrt {wrt!r}; valid: activations, params")
    m = as_model(model)
    if wrt == "activations" and layer is None:
        raise InputError("the Hessian w.r.t. activations needs a layer (--layer N)")
    if wrt == "params" and vector is not None:
        raise InputError("a steering vector lives in activation space; it cannot be compared with parameter "
                         "eigenvectors (drop --vector, or use --wrt activations)")
    p = HookPoint.parse(make_point(layer, kind).name, m.n_layers) if wrt == "activations" else None
    vec = as_vector(vector) if vector is not None else None
    if not texts:
        raise InputError("no texts to compute the loss on")
    batches = [_token_batch(m, list(texts[s:s + batch_size]), max_length) for s in range(0, len(texts), batch_size)]
    config = {"model": name_of(model), "wrt": wrt, "point": p.name if p else None,
              "params": params if wrt == "params" else None, "per_batch": per_batch, "n_texts": len(texts),
              "batch_size": batch_size, "top_k": top_k, "method": method, "which": which,
              "vector": name_of(vector) if vector is not None else None, "seed": seed}
    with Run(out, "compare hessian", config, seed=seed) as run:
        hess = LossHessian(m, p, batches) if p is not None else ParamHessian(m, batches, params)
        vals, vecs = top_eigen(hess, top_k, which=which, method=method, seed=seed)
        v = None
        if vec is not None:
            vec.check_fits(m)
            v = vec[layer] if layer in vec.layers else vec[vec.layers[0]]
        where = p.name if p is not None else f"parameters {params}"
        report = {"kind": "hessian", "model": m.name, "wrt": wrt, "point": p.name if p else None,
                  "method": method, "which": which, "dimension": hess.d,
                  "hessian_vector_products": hess.n_products, **eigen_report(vals, vecs, v)}
        if isinstance(hess, ParamHessian):
            report["params"] = {"glob": params, "names": hess.names, "count": hess.d}
            if per_batch and len(batches) > 1:
                each = [top_eigen(hess.restricted(i), top_k, which=which, method=method, seed=seed)[0].tolist()
                        for i in range(len(batches))]
                report["per_batch"] = {
                    "eigenvalues": each, "mean": [sum(col) / len(col) for col in zip(*each, strict=True)],
                    "note": "the mean of each batch's own leading eigenvalues, beside `eigenvalues` (the Hessian "
                            "of the token-weighted loss over all batches, i.e. one concatenated batch)"}
        write_json(Path(out) / "hessian.json", report)
        from safetensors.torch import save as save_tensors

        if vecs.numel() <= MAX_SAVED_EIGENVECTOR_VALUES:
            write_bytes(Path(out) / "hessian_eigenvectors.safetensors",
                        save_tensors({"eigenvalues": vals.float(), "eigenvectors": vecs.float().contiguous()}))
        hessian_plot(report, Path(out) / "hessian.png", title=f"{m.name}: {where}")
        run.results = {"eigenvalues": report["eigenvalues"]}
    return report
