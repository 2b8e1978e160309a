"""Comparison commands: ``compare vectors``, ``layers``, ``project-vocab``, ``diverge``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, GgufOpt, ModelArg, console, err_console, load, parse_floats, progress_bar

compare_app = typer.Typer(help="Compare steering vectors across layers and models.", no_args_is_help=True)


@compare_app.command("vectors")
def compare_vectors(
    vectors: Annotated[list[Path], typer.Argument(help="Vector files (.safetensors).")],
    out: Annotated[Path, typer.Option(help="Output folder (JSON + PNG).")],
    versus: Annotated[list[Path] | None, typer.Option("--vs", help="Vectors of a second model for the same "
                                                              "behaviours, paired by order with VECTORS.")] = None,
    labels: Annotated[list[str] | None, typer.Option("--label", help="Names for VECTORS (default: file stems).")]
    = None,
    force: Annotated[bool, typer.Option(help="Compare even when hook point / positions / family differ.")] = False,
) -> None:
    """Layer x layer cosine heatmaps, cross-model cosine per layer (with --vs), and a normalised PCA."""
    from ..jobs import vector_comparison

    names = list(labels) if labels else [p.stem for p in vectors]
    other_names = [f"{p.stem} ({p.parent.name})" if p.stem in names else p.stem for p in versus or []]
    res = vector_comparison(out, vectors, names, versus=versus or [], versus_labels=other_names, force=force)
    for pair, per_layer in res["cross_model"].items():
        console.print(f"{pair}: " + ", ".join(f"L{k} {c:.3f}" for k, c in per_layer.items()))
    if res["forced_differences"]:
        console.print("[yellow]compared despite differences:[/yellow] " + "; ".join(res["forced_differences"]))
    console.print(f"wrote {out}/vector_comparison.json and PNGs")


def layers_cmd(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output folder.")],
    positive: Annotated[Path | None, typer.Option(help="Positive prompts (instruction list JSON/CSV).")] = None,
    negative: Annotated[Path | None, typer.Option(help="Negative prompts.")] = None,
    pairs: Annotated[Path | None, typer.Option(help="Or: contrastive pairs JSONL (positive/negative).")] = None,
    ab: Annotated[Path | None, typer.Option(help="Or: A/B items; prompts end in the matching / other answer.")]
    = None,
    streams: Annotated[str, typer.Option(help="Comma-separated streams.")] = "resid_pre,resid_mid",
    positions: Annotated[str, typer.Option(help="last or tokens.")] = "last",
    limit: Annotated[int | None, typer.Option(help="Use at most this many prompts per set.")] = None,
    top: Annotated[int, typer.Option(help="How many layers to recommend.")] = 5,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Instruction lists and A/B items through the "
                                                                      "chat template (default: when the tokenizer "
                                                                      "has one; positions=last is then the last "
                                                                      "token of the templated prompt).")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Layer-selection metrics from two contrastive prompt sets, and the recommended layers."""
    from ..jobs import layer_selection
    from ..jobs.compare import contrast_prompts

    m = load(model, dtype, device, gguf_file)
    pos, neg, special = contrast_prompts(m, positive=positive, negative=negative, pairs=pairs, ab=ab, limit=limit,
                                         chat=chat)
    with progress_bar("streaming statistics", len(pos) + len(neg)) as advance:
        res = layer_selection(m, pos, neg, out, streams=[s.strip() for s in streams.split(",") if s.strip()],
                              positions=positions, batch_size=batch_size, top_k=top, progress=advance,
                              add_special_tokens=special)
    console.print(f"recommended layers: {res['recommended']} (rule: {res['rule']})")
    console.print(f"wrote {out}/layer_metrics.json and layer_metrics.png")


def project_vocab(
    vector: Annotated[Path, typer.Argument(help="Vector file.")],
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Output folder.")],
    layers: Annotated[str | None, typer.Option(help="Layers (default: all the vector has).")] = None,
    k: Annotated[int, typer.Option("--k", help="Tokens per side.")] = 10,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Also: dot products with the "
                                                                            "activations of generated tokens.")]
    = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 24,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Top positive and negative tokens of a direction per layer (and its dot product along generations)."""
    from ..jobs import vocab_projection

    m = load(model, dtype, device, gguf_file)
    res = vocab_projection(m, vector, out, layers=layers, top_k=k, prompts=prompt or [],
                           max_new_tokens=max_new_tokens)
    t = Table(title=f"vocabulary projection of {vector.name}")
    t.add_column("layer", justify="right")
    t.add_column("top positive")
    t.add_column("top negative")
    for row in res["layers"]:
        t.add_row(str(row["layer"]), row["positive"], row["negative"])
    console.print(t)
    console.print(f"wrote {out}/vocab_projection.json" + (" and direction_dots.json" if prompt else ""))


def diverge(
    model_a: Annotated[str, typer.Argument(help="First checkpoint (e.g. the base model).")],
    model_b: Annotated[str, typer.Argument(help="Second checkpoint of the same architecture.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    top_k: Annotated[int, typer.Option(help="How many layers to list.")] = 5,
    rank_by: Annotated[str, typer.Option("--rank-by", help="Rank layers by the divergence of the whole layer "
                                                             "('layer') or of its MLP ('mlp', as the LFP study).")]
    = "layer",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Per-layer parameter divergence (L2 norm of the difference per layer and module)."""
    from ..jobs import diverge as run_diverge

    a = load(model_a, dtype, device, validate=False)
    b = load(model_b, dtype, device, validate=False)
    res = run_diverge(a, b, out, top_k=top_k, rank_by=rank_by)
    values = res["per_layer"] if rank_by == "layer" else res["per_module"][rank_by]
    console.print(f"top layers by L2 divergence ({rank_by}): " + (", ".join(
        f"{i} ({values[i]:.4g})" for i in res["top_layers"]) or "none: the two models are identical"))
    console.print(f"wrote {out}/divergence.json and divergence.png")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by actlab.")],
    out: Annotated[Path | None, typer.Option(help="Output HTML (default: RUN_DIR/report.html).")] = None,
) -> None:
    """Build one self-contained offline HTML page for everything a run directory holds."""
    from ..report.run_report import build_report

    path = build_report(run_dir, out)
    console.print(f"wrote {path}")


@compare_app.command("prompting")
def compare_prompting(
    model: ModelArg,
    instruction: Annotated[str, typer.Option(help="The instruction put before each prompt (e.g. 'Answer like a "
                                                  "pirate.').")],
    prompts: Annotated[Path, typer.Option(help="Base prompts (JSON list / JSONL / CSV of instructions).")],
    out: Annotated[Path, typer.Option(help="Output folder (prompting.json, prompting.png, run.json).")],
    layers: Annotated[str | None, typer.Option(help="Layers: all, 4,8,12, 4-12 or 4-12:2.")] = None,
    kind: Annotated[str, typer.Option(help="Residual-stream kind to read and edit.")] = "resid_post",
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="Use the chat template (default: when the "
                                                                      "tokenizer has one).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many prompts.")] = None,
    train_fraction: Annotated[float, typer.Option(help="Share of prompts that fit the maps (the rest test "
                                                       "them).")] = 0.5,
    kl: Annotated[bool, typer.Option(help="Also the next-token KL of each map to the prompted run.")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Does an instruction add to the residual stream or rotate it? Fits both maps per layer."""
    from ..data import load_instructions
    from ..jobs import prompting

    texts = load_instructions(prompts, limit=limit)
    m = load(model, dtype, device, gguf_file)
    with progress_bar("layers", None) as advance:
        res = prompting(m, instruction, texts, out, layers=layers, kind=kind, chat=chat,
                        train_fraction=train_fraction, seed=seed, kl=kl, progress=advance)
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
    console.print(f"wrote {out}/prompting.json and prompting.png")


@compare_app.command("curvature")
def compare_curvature(
    model: ModelArg,
    vector: Annotated[Path, typer.Option(help="Steering vector (.safetensors).")],
    out: Annotated[Path, typer.Option(help="Output folder (curvature.json, curvature.png, run.json).")],
    layer: Annotated[int | None, typer.Option(help="Layer of the vector to use (default: its first).")] = None,
    multipliers: Annotated[str, typer.Option(help="Comma-separated multipliers.")] = "-4,-2,0,2,4",
    data: Annotated[Path | None, typer.Option(help="Texts: curvature of the next-token loss.")] = None,
    ab: Annotated[Path | None, typer.Option(help="Or A/B items: curvature of log p(matching answer).")] = None,
    limit: Annotated[int, typer.Option(help="Use at most this many texts or items.")] = 32,
    max_length: Annotated[int, typer.Option(help="Tokens per text.")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Second derivative of the model's loss (or log p(answer)) along a steering vector, by autograd."""
    from ..data import read_texts
    from ..errors import InputError
    from ..jobs import curvature

    if (data is None) == (ab is None):
        raise InputError("give --data TEXTS (next-token loss) or --ab ITEMS (log p(matching answer)), not both")
    mults = parse_floats(multipliers)
    texts = read_texts(data, limit=limit) if data else []
    m = load(model, dtype, device, gguf_file)
    res = curvature(m, vector, out, layer=layer, multipliers=mults, texts=texts, ab=ab, limit=limit,
                    max_length=max_length)
    t = Table(title=f"{res['metric']} along the vector at {res['point']}")
    for col in ("multiplier", "value", "first derivative", "second derivative"):
        t.add_column(col, justify="right")
    for r in res["rows"]:
        t.add_row(f"{r['multiplier']:g}", f"{r['value']:.5g}", f"{r['first_derivative']:.4g}",
                  f"{r['second_derivative']:.4g}")
    console.print(t)
    console.print(f"wrote {out}/curvature.json and curvature.png")


@compare_app.command("hessian")
def compare_hessian(
    model: ModelArg,
    layer: Annotated[int, typer.Option(help="Layer whose activations the loss is differentiated against.")],
    data: Annotated[Path, typer.Option(help="Texts the next-token loss is averaged over.")],
    out: Annotated[Path, typer.Option(help="Output folder (hessian.json, hessian.png, eigenvectors).")],
    kind: Annotated[str, typer.Option(help="Residual-stream kind.")] = "resid_post",
    vector: Annotated[Path | None, typer.Option(help="A steering vector to compare the eigenvectors with.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Eigenpairs to find.")] = 5,
    method: Annotated[str, typer.Option(help="lanczos (scipy ARPACK) or power (iteration with deflation).")]
    = "lanczos",
    which: Annotated[str, typer.Option(help="LM: largest magnitude; LA: largest algebraic.")] = "LM",
    limit: Annotated[int, typer.Option(help="Use at most this many texts.")] = 16,
    max_length: Annotated[int, typer.Option(help="Tokens per text.")] = 64,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Leading eigenpairs of the Hessian of the next-token loss w.r.t. a vector added at every position."""
    from ..data import read_texts
    from ..jobs import hessian

    texts = read_texts(data, limit=limit)
    m = load(model, dtype, device, gguf_file)
    with err_console.status("Hessian-vector products (Lanczos) ..."):
        rep = hessian(m, texts, out, layer=layer, kind=kind, vector=vector, top_k=top_k, method=method, which=which,
                      max_length=max_length)
    console.print("eigenvalues: " + ", ".join(f"{v:.4g}" for v in rep["eigenvalues"])
                  + (" | |cos| to the vector: " + ", ".join(f"{c:.3f}" for c in rep["abs_cos_to_vector"])
                     + f" (random ~{rep['random_direction_abs_cos']:.3f})" if "abs_cos_to_vector" in rep else ""))
    console.print(f"wrote {out}/hessian.json, hessian.png and hessian_eigenvectors.safetensors "
                  f"({rep['hessian_vector_products']} Hessian-vector products)")
