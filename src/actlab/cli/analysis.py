"""Comparison commands: ``layers``, ``compare vectors|behaviours|prompting|curvature|hessian``,
``project-vocab``, ``diverge``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    BatchOpt,
    ChatOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    LayersOpt,
    LimitOpt,
    MaxMemOpt,
    ModelArg,
    checks,
    console,
    load,
    opt,
    parse_floats,
    wrote,
)

compare_app = typer.Typer(help="Compare steering vectors across layers and models; ask whether prompting adds or "
                               "rotates, and how curved the model is along a direction.", no_args_is_help=True,
                          rich_markup_mode=None)
OutDir = Annotated[Path, opt("--out", metavar="DIR", help="Run folder (JSON, PNG, run.json).")]


def _check_labels(labels: list[str] | None, n: int, what: str, one: str) -> None:
    """--label names, when given: one plain name per item."""
    from ..errors import InputError

    if labels and len(labels) != n:
        raise InputError(f"{len(labels)} --label names for {n} {what}; give one per {one} (or none)")
    for name in labels or []:
        checks.plain_name(name, "--label")


@compare_app.command("vectors")
def compare_vectors(
    vectors: Annotated[list[Path], typer.Argument(help="Vector files (.safetensors).", metavar="VECTOR...",
                                                  show_default=False)],
    out: OutDir,
    versus: Annotated[list[Path] | None, opt("--vs", metavar="FILE", help="Vectors of a second model for the same "
                                             "behaviours, paired by order with VECTORS (repeat).")] = None,
    labels: Annotated[list[str] | None, opt("--label", metavar="NAME", help="Names for VECTORS [default: file "
                                            "stems].")] = None,
    force: Annotated[bool, opt("--force", help="Compare even when hook point / positions / family differ.")] = False,
) -> None:
    """Layer x layer cosine heatmaps, cross-model cosine per layer (with --vs), and a normalised PCA."""
    from ..jobs import vector_comparison
    from ..steering.vector import SteeringVector

    for v in [*vectors, *(versus or [])]:
        checks.input_file(v, "vector file")
    checks.output_dir(out, "--out folder")
    _check_labels(labels, len(vectors), "vectors", "vector")
    loaded = [SteeringVector.load(v).check_values(f"the vector in {str(v)!r}") for v in vectors]
    others = [SteeringVector.load(v).check_values(f"the vector in {str(v)!r}") for v in versus or []]
    names = list(labels) if labels else [p.stem for p in vectors]
    other_names = [f"{p.stem} ({p.parent.name})" if p.stem in names else p.stem for p in versus or []]
    res = vector_comparison(out, loaded, names, versus=others, versus_labels=other_names, force=force)
    for pair, per_layer in res["cross_model"].items():
        console.print(f"{pair}: " + ", ".join(f"L{k} {c:.3f}" for k, c in per_layer.items()), highlight=False)
    if res["forced_differences"]:
        console.print("compared despite differences: " + "; ".join(res["forced_differences"]), highlight=False)
    wrote(out / "vector_comparison.json", "PNGs")


@compare_app.command("behaviours")
def compare_behaviours(
    model_a: Annotated[str, typer.Argument(help="First model (e.g. the base model): hub id, folder or .gguf.",
                                           metavar="MODEL_A", show_default=False)],
    model_b: Annotated[str, typer.Argument(help="Second model (e.g. its chat fine-tune).", metavar="MODEL_B",
                                           show_default=False)],
    out: OutDir,
    data: Annotated[list[Path], opt("--data", metavar="FILE", help="A/B dataset of one behaviour (repeat: one per "
                                    "behaviour).")],
    labels: Annotated[list[str] | None, opt("--label", metavar="NAME", help="Behaviour names, one per --data "
                                            "[default: the CAA folder name or the file stem].")] = None,
    layers: LayersOpt = None,
    positions: Annotated[str | None, opt("--positions", metavar="POLICY", help="Read positions [default: answer, "
                                         "the answer letter].")] = None,
    limit: LimitOpt = None,
    chat: ChatOpt = None,
    batch_size: BatchOpt = 16,
    force: Annotated[bool, opt("--force", help="Compare even when hook point / positions / family differ.")] = False,
    overwrite: Annotated[bool, opt("--overwrite", help="Extract again the vectors a run in this folder kept.")]
    = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Several behaviours on two models in one run: a vector per behaviour and model, the per-layer cosine
    between the two models' vectors of each behaviour, and the cosines between behaviours within each model."""
    from ..jobs.compare import behaviour_comparison
    from ..steering.prompts import check_read_policy

    for f in data:
        checks.input_file(f, "--data file")
    checks.output_dir(out, "--out folder")
    _check_labels(labels, len(data), "--data files", "file")
    checks.layer_syntax(layers)
    if positions is not None:
        check_read_policy(positions)
    checks.positive(limit, "--limit")
    checks.positive(batch_size, "--batch-size")
    res = behaviour_comparison(model_a, model_b, data, out, labels=labels or (), layers=layers, limit=limit,
                               positions=positions, chat=chat, batch_size=batch_size, force=force,
                               overwrite=overwrite,
                               load=lambda name: load(name, dtype, device, device_map=device_map,
                                                      max_memory=max_memory))
    for label, per_layer in res["cross_model"].items():
        console.print(f"{label}, {res['models'][0]} vs {res['models'][1]}: " + ", ".join(
            f"L{k} {c:.3f}" for k, c in per_layer.items()), highlight=False)
    wrote(out / "behaviours.json", "vector_comparison.json", "vectors/", "PNGs")


def layers_cmd(
    model: ModelArg,
    out: OutDir,
    positive: Annotated[Path | None, opt("--positive", metavar="FILE", help="Positive prompts (instruction list "
                                         "JSON/CSV).")] = None,
    negative: Annotated[Path | None, opt("--negative", metavar="FILE", help="Negative prompts.")] = None,
    pairs: Annotated[Path | None, opt("--pairs", metavar="FILE", help="Or: contrastive pairs JSONL "
                                      "(positive/negative).")] = None,
    ab: Annotated[Path | None, opt("--ab", metavar="FILE", help="Or: A/B items; prompts end in the matching / "
                                   "other answer.")] = None,
    streams: Annotated[str, opt("--streams", metavar="KINDS", help="Comma-separated residual kinds.")]
    = "resid_pre,resid_mid",
    positions: Annotated[str, opt("--positions", metavar="POLICY", help="Capture positions: last or tokens.")]
    = "last",
    limit: LimitOpt = None,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="How many layers to recommend.")] = 5,
    pca: Annotated[str | None, opt("--pca", metavar="LAYERS", help="Also draw the dataset: the PCA of the two "
                                   "sets' activations at these layers (all, 4, 4,8, 4-12:2), coloured by set.")]
    = None,
    untangle: Annotated[bool, opt("--untangle", help="Also per layer: a linear probe's held-out accuracy, pairwise "
                                  "distances and their growth with depth (untangling.json).")] = False,
    chat: ChatOpt = None,
    batch_size: BatchOpt = 16,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Layer-selection metrics from two contrastive prompt sets, and the recommended layers."""
    from ..errors import InputError
    from ..hooks.points import RESIDUAL_KINDS
    from ..jobs import layer_selection
    from ..jobs.compare import contrast_prompts, read_prompt_sets

    if not (pairs or ab or (positive and negative)):
        raise InputError("give --positive and --negative, or --pairs, or --ab")
    for f, what in ((positive, "--positive"), (negative, "--negative"), (pairs, "--pairs"), (ab, "--ab")):
        checks.input_file(f, f"{what} file")
    checks.output_dir(out, "--out folder")
    stream_list = [s.strip() for s in streams.split(",") if s.strip()]
    for s in stream_list or [""]:
        checks.choice(s, "stream", RESIDUAL_KINDS)
    checks.choice(positions, "--positions", ("last", "tokens"))
    checks.positive(limit, "--limit")
    checks.positive(top_k, "--top-k")
    checks.positive(batch_size, "--batch-size")
    checks.layer_syntax(pca)
    sets = read_prompt_sets(positive=positive, negative=negative, pairs=pairs, ab=ab, limit=limit)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    pos, neg, special = contrast_prompts(m, chat=chat, sets=sets)
    res = layer_selection(m, pos, neg, out, streams=stream_list, positions=positions, batch_size=batch_size,
                          top_k=top_k, add_special_tokens=special, pca_layers=pca, untangle=untangle)
    console.print(f"recommended layers: {res['recommended']} (rule: {res['rule']})", highlight=False)
    console.print(f"the control-vectors study's order: {res['study_ranking']} ({res['study_rule']})", highlight=False)
    if res.get("pca"):
        console.print("dataset PCA, separation of the two sets per layer: " + ", ".join(
            f"{r['layer']}: {r['separation']:.2f}" for r in res["pca"]["layers"]), highlight=False)
    growth = res["variance_growth"].get(res["streams"][-1])
    if growth:
        console.print(f"mean variance grows x{growth['growth']:.3f} per layer (log-linear fit, R2 {growth['r2']:.2f}, "
                      f"layers {growth['layers'][0]}-{growth['layers'][-1]})", highlight=False)
    if res.get("untangling"):
        u = res["untangling"]
        console.print("held-out linear separability per layer: " + ", ".join(
            f"{r['layer']}: {r['test_accuracy']:.2f}" if r["test_accuracy"] is not None else f"{r['layer']}: -"
            for r in u["layers"]), highlight=False)
    wrote(out / "layer_metrics.json", "layer_metrics.png",
          *(["dataset_pca.json", "dataset_pca.png"] if res.get("pca") else []),
          *(["untangling.json", "untangling.png"] if res.get("untangling") else []))


def project_vocab(
    model: ModelArg,
    vector: Annotated[Path, typer.Argument(help="Vector file.", metavar="VECTOR", show_default=False)],
    out: OutDir,
    layers: LayersOpt = None,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="Tokens per side.")] = 10,
    prompt: Annotated[list[str] | None, opt("--prompt", "-p", metavar="TEXT", help="Also: dot products with the "
                                            "activations of generated tokens.")] = None,
    max_new_tokens: Annotated[int, opt("--max-new-tokens", metavar="N", help="Tokens to generate per prompt.")]
    = 24,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Top positive and negative tokens of a direction per layer (and its dot product along generations)."""
    from ..errors import InputError
    from ..jobs import vocab_projection

    checks.input_file(vector, "vector file")
    checks.output_dir(out, "--out folder")
    checks.layer_syntax(layers)
    checks.positive(top_k, "--top-k")
    checks.positive(max_new_tokens, "--max-new-tokens")
    from ..steering.vector import SteeringVector

    vec = SteeringVector.load(vector).check_values(f"the vector in {str(vector)!r}")
    for p in prompt or []:
        if not p.strip():
            raise InputError("a --prompt is empty; give some text")
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    if top_k > m.vocab_size:
        raise InputError(f"--top-k {top_k} is larger than the vocabulary ({m.vocab_size} tokens)")
    if prompt:
        checks.generation_length(m, max_new_tokens)
    res = vocab_projection(m, vec, out, layers=layers, top_k=top_k, prompts=prompt or [],
                           max_new_tokens=max_new_tokens)
    t = Table(title=f"vocabulary projection of {vector.name}")
    t.add_column("layer", justify="right")
    t.add_column("top positive")
    t.add_column("top negative")
    for row in res["layers"]:
        t.add_row(str(row["layer"]), row["positive"], row["negative"])
    console.print(t)
    for row in res.get("dots", []):  # the joint per-token table: the direction's reading beside the lens's
        pt = Table(title=f"{row['prompt']!r}, generated: the unit direction's dot product with "
                         f"blocks.{row['layer']}.{row['point']} at each token, and the logit lens's top token there")
        for col, justify in (("token", "left"), ("dot", "right"), ("lens top (p)", "left")):
            pt.add_column(col, justify=justify)  # type: ignore[arg-type]
        for tok, d, lt, lp in zip(row["tokens"], row["dots"], row["lens_top"], row["lens_top_prob"], strict=True):
            pt.add_row(repr(tok), f"{d:+.3f}", f"{lt!r} ({lp:.2f})")
        console.print(pt)
    wrote(out / "vocab_projection.json", *(["direction_dots.json"] if prompt else []))


def diverge(
    model_a: Annotated[str, typer.Argument(help="First checkpoint (e.g. the base model).", metavar="MODEL_A",
                                           show_default=False)],
    model_b: Annotated[str, typer.Argument(help="Second checkpoint of the same architecture.", metavar="MODEL_B",
                                           show_default=False)],
    out: OutDir,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="How many layers to list.")] = 5,
    rank_by: Annotated[str, opt("--rank-by", metavar="WHAT", help="Rank layers by the divergence of the whole "
                                "layer ('layer') or of its MLP ('mlp', as the LFP study).")] = "layer",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Per-layer parameter divergence (L2 norm of the difference per layer and module)."""
    from ..analysis.divergence import RANK_BY
    from ..jobs import diverge as run_diverge

    checks.output_dir(out, "--out folder")
    checks.positive(top_k, "--top-k")
    checks.choice(rank_by, "--rank-by", RANK_BY)
    a = load(model_a, dtype, device, validate=False, device_map=device_map, max_memory=max_memory)
    b = load(model_b, dtype, device, validate=False, device_map=device_map, max_memory=max_memory)
    res = run_diverge(a, b, out, top_k=top_k, rank_by=rank_by)
    values = res["per_layer"] if rank_by == "layer" else res["per_module"][rank_by]
    console.print(f"top layers by L2 divergence ({rank_by}): " + (", ".join(
        f"{i} ({values[i]:.4g})" for i in res["top_layers"]) or "none: the two models are identical"),
        highlight=False)
    wrote(out / "divergence.json", "divergence.png")


@compare_app.command("prompting")
def compare_prompting(
    model: ModelArg,
    instruction: Annotated[str, typer.Option(help="The instruction put before each prompt (e.g. 'Answer like a "
                                                  "pirate.').", metavar="TEXT")],
    prompts: Annotated[Path, opt("--prompts", metavar="FILE", help="Base prompts (JSON list / JSONL / CSV of "
                                                                   "instructions).")],
    out: OutDir,
    layers: LayersOpt = None,
    kind: Annotated[str, typer.Option(metavar="KIND", help="Residual-stream kind to read and edit.")] = "resid_post",
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Use the chat template (default: when the "
                                                                      "tokenizer has one).")] = None,
    limit: Annotated[int | None, typer.Option(metavar="N", help="Use at most this many prompts.")] = None,
    train_fraction: Annotated[float, typer.Option(metavar="X", help="Share of prompts that fit the maps (the rest test "
                                                       "them).")] = 0.5,
    kl: Annotated[bool, typer.Option(help="Also the next-token KL of each map to the prompted run.")] = True,
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the train/test split.")] = 0,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Does an instruction add to the residual stream or rotate it? Fits both maps per layer."""
    from ..data import load_instructions
    from ..hooks.points import RESIDUAL_KINDS
    from ..jobs import prompting

    checks.input_file(prompts, "--prompts file")
    checks.output_dir(out, "--out folder")
    checks.layer_syntax(layers)
    checks.choice(kind, "--kind", RESIDUAL_KINDS)
    checks.positive(limit, "--limit")
    checks.fraction(train_fraction, "--train-fraction")
    checks.seed(seed)
    if not instruction.strip():
        from ..errors import InputError

        raise InputError("--instruction is empty")
    texts = load_instructions(prompts, limit=limit)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    res = prompting(m, instruction, texts, out, layers=layers, kind=kind, chat=chat, train_fraction=train_fraction,
                    seed=seed, kl=kl)
    t = Table(title=f"held-out residual error (1 = explains nothing), {res['n_test']} test prompts")
    for col in ("layer", "addition", "rotation", "cos(x, y)", "|y|/|x|", "angle") + (("KL add", "KL rot", "KL none")
                                                                                   if kl else ()):
        t.add_column(col, justify="right")
    for r in res["per_layer"]:
        row = [str(r["layer"]), f"{r['residual_error_add']:.3f}", f"{r['residual_error_rotate']:.3f}",
               f"{r['mean_cos_x_y']:.3f}", f"{r['mean_norm_ratio_y_x']:.3f}", f"{r['theta_degrees']:.1f}"]
        if kl:
            row += [f"{r['kl_add']:.3g}", f"{r['kl_rotate']:.3g}", f"{r['kl_none']:.3g}"]
        t.add_row(*row)
    console.print(t)
    wrote(out / "prompting.json", "prompting.png")


@compare_app.command("curvature")
def compare_curvature(
    model: ModelArg,
    vector: Annotated[Path, typer.Option(metavar="FILE", help="Steering vector (.safetensors).")],
    out: OutDir,
    layer: Annotated[int | None, opt("--layer", metavar="N", help="Layer of the vector to use [default: its "
                                                                   "first].")] = None,
    multipliers: Annotated[str, typer.Option(metavar="LIST", help="Comma-separated multipliers.")] = "-4,-2,0,2,4",
    data: Annotated[Path | None, opt("--data", metavar="PATH", help="Texts: curvature of the next-token loss.")]
    = None,
    ab: Annotated[Path | None, opt("--ab", metavar="FILE", help="Or A/B items: curvature of log p(matching "
                                                               "answer).")] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="Use at most this many texts or items.")] = 32,
    max_length: Annotated[int, typer.Option(metavar="N", help="Tokens per text.")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Second derivative of the model's loss (or log p(answer)) along a steering vector, by autograd."""
    from ..data import read_texts
    from ..errors import InputError
    from ..jobs import curvature

    if (data is None) == (ab is None):
        raise InputError("give --data TEXTS (next-token loss) or --ab ITEMS (log p(matching answer)), not both")
    checks.input_file(vector, "--vector file")
    checks.input_path(data, "--data")
    checks.input_file(ab, "--ab file")
    checks.output_dir(out, "--out folder")
    checks.positive(limit, "--limit")
    checks.positive(max_length, "--max-length")
    mults = parse_floats(multipliers)
    from ..data import load_ab
    from ..jobs.common import FromFile
    from ..steering.vector import SteeringVector

    vec = SteeringVector.load(vector).check_values(f"the vector in {str(vector)!r}")
    if layer is not None:
        vec[layer]  # a layer the file lacks: one line naming the layers it has
    texts = read_texts(data, limit=limit) if data else []
    items = FromFile(load_ab(ab, limit=limit), ab) if ab else None
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    res = curvature(m, vec, out, layer=layer, multipliers=mults, texts=texts, ab=items, limit=limit,
                    max_length=max_length)
    t = Table(title=f"{res['metric']} along the vector at {res['point']}")
    for col in ("multiplier", "value", "first derivative", "second derivative"):
        t.add_column(col, justify="right")
    for r in res["rows"]:
        t.add_row(f"{r['multiplier']:g}", f"{r['value']:.5g}", f"{r['first_derivative']:.4g}",
                  f"{r['second_derivative']:.4g}")
    console.print(t)
    wrote(out / "curvature.json", "curvature.png")


@compare_app.command("hessian")
def compare_hessian(
    model: ModelArg,
    data: Annotated[Path, typer.Option(metavar="FILE", help="Texts the next-token loss is averaged over.")],
    out: OutDir,
    layer: Annotated[int | None, opt("--layer", metavar="N", help="Layer whose activations the loss is "
                                     "differentiated against (with --wrt activations).")] = None,
    wrt: Annotated[str, opt("--wrt", metavar="WRT", help="activations (a vector added at every position of "
                            "--layer) or params (the model's weights: the loss landscape).")] = "activations",
    params: Annotated[str, opt("--params", metavar="GLOB", help="With --wrt params: the parameters, a glob over "
                               "their names, e.g. 'model.layers.3.*' [default: every parameter].")] = "*",
    per_batch: Annotated[bool, opt("--per-batch", help="With --wrt params: also each batch's own leading "
                                   "eigenvalues and their mean, beside the Hessian of all batches at once.")]
    = False,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Texts per batch.")] = 8,
    kind: Annotated[str, typer.Option(metavar="KIND", help="Residual-stream kind.")] = "resid_post",
    vector: Annotated[Path | None, opt("--vector", metavar="FILE", help="A steering vector to compare the "
                                                                        "eigenvectors with.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", metavar="K", help="Eigenpairs to find.")] = 5,
    method: Annotated[str, opt("--method", metavar="METHOD", help="lanczos (scipy ARPACK) or power (iteration "
                                                                   "with deflation).")] = "lanczos",
    which: Annotated[str, typer.Option(metavar="WHICH", help="LM: largest magnitude; LA: largest algebraic.")] = "LM",
    limit: Annotated[int, typer.Option(metavar="N", help="Use at most this many texts.")] = 16,
    max_length: Annotated[int, typer.Option(metavar="N", help="Tokens per text.")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Leading eigenpairs of the Hessian of the next-token loss w.r.t. a vector added at every position of a
    layer, or w.r.t. the parameters (--wrt params)."""
    from ..analysis.curvature import EIGEN_METHODS, WHICH
    from ..data import read_texts
    from ..errors import InputError
    from ..hooks.points import RESIDUAL_KINDS
    from ..jobs import hessian

    checks.input_path(data, "--data")
    checks.input_file(vector, "--vector file")
    checks.output_dir(out, "--out folder")
    checks.choice(wrt, "--wrt", ("activations", "params"))
    if wrt == "activations" and layer is None:
        raise InputError("--wrt activations needs --layer N (the layer whose activations are varied)")
    if wrt == "params" and vector is not None:
        raise InputError("--vector compares activation-space eigenvectors; it does not apply to --wrt params")
    if layer is not None:
        checks.non_negative(layer, "--layer")
    checks.positive(batch_size, "--batch-size")
    checks.choice(kind, "--kind", RESIDUAL_KINDS)
    checks.positive(top_k, "--top-k")
    checks.choice(method, "--method", EIGEN_METHODS)
    checks.choice(which, "--which", WHICH)
    checks.positive(limit, "--limit")
    checks.positive(max_length, "--max-length")
    from ..steering.vector import SteeringVector

    vec = SteeringVector.load(vector).check_values(f"the vector in {str(vector)!r}") if vector else None
    texts = read_texts(data, limit=limit)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    rep = hessian(m, texts, out, layer=layer, kind=kind, vector=vec, top_k=top_k, method=method, which=which,
                  max_length=max_length, batch_size=batch_size, wrt=wrt, params=params, per_batch=per_batch)
    if wrt == "params":
        console.print(f"over {rep['params']['count']:,} parameters in {len(rep['params']['names'])} tensors "
                      f"matching {params!r}", highlight=False)
    if rep.get("per_batch"):
        console.print("mean of the per-batch eigenvalues: " + ", ".join(f"{v:.4g}" for v in rep["per_batch"]["mean"])
                      + f" ({len(rep['per_batch']['eigenvalues'])} batches)", highlight=False)
    console.print("eigenvalues: " + ", ".join(f"{v:.4g}" for v in rep["eigenvalues"])
                  + (" | |cos| to the vector: " + ", ".join(f"{c:.3f}" for c in rep["abs_cos_to_vector"])
                     + f" (random ~{rep['random_direction_abs_cos']:.3f})" if "abs_cos_to_vector" in rep else ""))
    wrote(out / "hessian.json", "hessian.png", f"hessian_eigenvectors.safetensors "
          f"({rep['hessian_vector_products']} Hessian-vector products)")


def patch_cmd(
    model: ModelArg,
    clean: Annotated[str, opt("--clean", metavar="TEXT", help="The clean prompt (the behaviour to explain).",
                              show_default=False)],
    corrupt: Annotated[str, opt("--corrupt", metavar="TEXT", help="The corrupted prompt, as many tokens as "
                                "--clean.", show_default=False)],
    answer: Annotated[str, opt("--answer", metavar="TEXT", help="The clean answer token (text of one token, e.g. "
                               "' Paris', or a token id).", show_default=False)],
    wrong: Annotated[str, opt("--wrong", metavar="TEXT", help="The competing token; the metric is "
                              "logit(answer) - logit(wrong) at the last position.", show_default=False)],
    out: OutDir,
    points: Annotated[str, opt("--points", metavar="KINDS", help="Per-layer kinds to patch (resid_pre, attn_out, "
                               "mlp_out, attn.z...).")] = "resid_pre,attn_out,mlp_out",
    layers: LayersOpt = None,
    method: Annotated[str, opt("--method", metavar="METHOD", help="activation, attribution or both.")] = "both",
    per_head: Annotated[bool, opt("--per-head", help="Patch each head at every position (per-head kinds: "
                                  "attn.z, attn.q, attn.k, attn.v, attn.result).")] = False,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Patched runs per forward pass.")] = 32,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Activation and attribution patching: which layers, positions or heads carry the clean behaviour."""
    from ..hooks.points import check_spec
    from ..jobs.patching import METHODS
    from ..jobs.patching import patch as run_patch

    checks.output_dir(out, "--out folder")
    checks.layer_syntax(layers)
    checks.choice(method, "--method", METHODS)
    checks.positive(batch_size, "--batch-size")
    for k in points.split(","):
        if k.strip():
            check_spec(k.strip() if k.strip().startswith("blocks.") else f"blocks.0.{k.strip()}")
    for text, flag in ((clean, "--clean"), (corrupt, "--corrupt"), (answer, "--answer"), (wrong, "--wrong")):
        if not text:
            from ..errors import InputError

            raise InputError(f"{flag} is empty")
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    res = run_patch(m, clean, corrupt, out, answer=answer, wrong=wrong, kinds=points, layers=layers,
                    method=method, per_head=per_head, batch_size=batch_size)
    console.print(f"metric: clean {res['clean_metric']:.4g}, corrupted {res['corrupt_metric']:.4g}", highlight=False)
    wrote(out / "patching.json", *(f"patching_{k}.png" for k in res["methods"]))
