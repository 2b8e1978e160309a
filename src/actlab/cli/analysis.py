"""Comparison commands: ``compare vectors``, ``layers``, ``project-vocab``, ``diverge``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, GgufOpt, ModelArg, console, load, progress_bar

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
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Layer-selection metrics from two contrastive prompt sets, and the recommended layers."""
    from ..jobs import layer_selection
    from ..jobs.compare import contrast_prompts

    m = load(model, dtype, device, gguf_file)
    pos, neg = contrast_prompts(m, positive=positive, negative=negative, pairs=pairs, ab=ab, limit=limit)
    with progress_bar("streaming statistics", len(pos) + len(neg)) as advance:
        res = layer_selection(m, pos, neg, out, streams=[s.strip() for s in streams.split(",") if s.strip()],
                              positions=positions, batch_size=batch_size, top_k=top, progress=advance)
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
