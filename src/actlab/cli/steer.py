"""``actlab steer ...``: extract, generate, sweep, ablate, refusal, export-gguf, import-gguf."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    ModelArg,
    console,
    err_console,
    load,
    parse_floats,
    parse_layers,
    progress_bar,
)

app = typer.Typer(help="Extract steering vectors, steer generation, sweep, ablate directions, find refusal.",
                  no_args_is_help=True)

MinConfOpt = Annotated[float | None, typer.Option("--min-confidence", help="Anthropic persona files: keep items "
                                                  "whose label_confidence is at least this.")]
ChoicesOpt = Annotated[bool, typer.Option("--as-choices", help="Render Yes/No (persona) items as A/B choices "
                                                               "(letters balanced across items).")]
ChatOpt = Annotated[bool | None, typer.Option("--chat/--no-chat", help="Use the chat template (default: when the "
                                                                       "tokenizer has one).")]
LayersOpt = Annotated[str | None, typer.Option("--layers", help="Layers: all, 4,8,12, 4-12 or 4-12:2.")]


@app.command()
def extract(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Dataset file (A/B JSON/JSONL, pairs JSONL, or instructions).")],
    out: Annotated[Path, typer.Option(help="Where to write the vector (.safetensors).")],
    format: Annotated[str, typer.Option("--format", help="ab, pairs or instructions.")] = "ab",
    negative: Annotated[Path | None, typer.Option(help="For --format instructions: the negative set "
                                                       "(e.g. harmless).")] = None,
    point: Annotated[str, typer.Option(help="Hook point kind to read (resid_post, resid_pre, attn_out...).")]
    = "resid_post",
    layers: LayersOpt = None,
    method: Annotated[str, typer.Option(help="mean_diff, pca or logreg.")] = "mean_diff",
    positions: Annotated[str | None, typer.Option(help="Read positions: answer (A/B), last, eoi, eoi:-1, mean "
                                                       "(default: answer / mean / eoi by format).")] = None,
    chat: ChatOpt = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many items.")] = None,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    min_confidence: MinConfOpt = None,
    as_choices: ChoicesOpt = False,
    max_length: Annotated[int | None, typer.Option(help="Longest text in tokens (default: the model's "
                                                        "context).")] = None,
    truncate: Annotated[str, typer.Option(help="Texts longer than --max-length: error, skip (drop the pair) or "
                                               "left (keep the last tokens).")] = "error",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Extract a steering vector from a contrastive dataset in one batched pass."""
    from ..jobs import extract_vector

    m = load(model, dtype, device, gguf_file)
    n = None
    with progress_bar(f"extracting {method} at {point}", None) as advance:
        vec = extract_vector(m, data, out, format=format, negative=negative, point=point, layers=layers,
                             method=method, positions=positions, chat=chat, limit=limit, batch_size=batch_size,
                             progress=advance, min_confidence=min_confidence, as_choices=as_choices,
                             max_length=max_length, truncate=truncate)
    norms = vec.norms()
    n = vec.meta.get("n_positive")
    console.print(f"wrote {out}: {len(norms)} layers at {point}, method {method}, positions {vec.meta['positions']}, "
                  f"{n} contrasts; norms {min(norms.values()):.3g}..{max(norms.values()):.3g}")


@app.command()
def generate(
    model: ModelArg,
    vector: Annotated[Path, typer.Option(help="Steering vector (.safetensors or GGUF control vector).")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt (repeat for several).")],
    layers: LayersOpt = None,
    layer: Annotated[list[int] | None, typer.Option(help="Deprecated: use --layers.", hidden=True)] = None,
    multiplier: Annotated[float, typer.Option("--multiplier", "-m", help="Scale of the vector.")] = 4.0,
    positions: Annotated[str, typer.Option(help="all, generated or from_eoi.")] = "all",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 40,
    chat: ChatOpt = None,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample (seeded) or greedy.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Generate with and without steering and print them side by side."""
    from ..jobs import generate as run_generate

    if layer:
        err_console.print("--layer is deprecated; use --layers (e.g. --layers 8,10 or --layers 8-12)")
        layers = ",".join(str(i) for i in layer)
    m = load(model, dtype, device, gguf_file)
    rows = run_generate(m, vector, prompt, multiplier=multiplier, layers=layers, positions=positions,
                        max_new_tokens=max_new_tokens, chat=chat, sample=sample, seed=seed)
    n = len(prompt)
    table = Table(title=f"steering at layers {layers or 'of the vector'}, x{multiplier:g}, positions={positions}",
                  show_lines=True)
    table.add_column("prompt", max_width=30)
    table.add_column("unsteered")
    table.add_column(f"steered (x{multiplier:g})")
    for k in range(n):
        table.add_row(prompt[k], rows[k]["text"], rows[n + k]["text"])
    console.print(table)


@app.command()
def sweep(
    model: ModelArg,
    vector: Annotated[Path, typer.Option(help="Steering vector (.safetensors).")],
    data: Annotated[Path, typer.Option(help="Held-out A/B questions (CAA JSON / Anthropic JSONL).")],
    out: Annotated[Path, typer.Option(help="Output folder (sweep.json, sweep.csv, PNGs).")],
    layers: LayersOpt = None,
    multipliers: Annotated[str, typer.Option(help="Comma-separated multipliers.")] = "-2,-1,0,1,2",
    positions: Annotated[str | None, typer.Option(help="from_eoi (chat default) or all.")] = None,
    chat: ChatOpt = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many questions.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Recompute cells already in sweep.json.")] = False,
    batch_size: Annotated[int, typer.Option(help="Questions per forward pass.")] = 16,
    min_confidence: MinConfOpt = None,
    as_choices: ChoicesOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """p(answer matching behaviour) under steering, for each layer x multiplier."""
    from ..jobs import sweep as run_sweep

    mults = parse_floats(multipliers)
    m = load(model, dtype, device, gguf_file)
    with progress_bar("sweep cells", None) as advance:
        res = run_sweep(m, vector, data, out, layers=layers, multipliers=mults, positions=positions, chat=chat,
                        limit=limit, overwrite=overwrite, batch_size=batch_size, progress=advance,
                        min_confidence=min_confidence, as_choices=as_choices)
    grid = res.grid()
    n_q = next(iter(res.cells.values()))["n"] if res.cells else 0
    table = Table(title=f"p(matching behaviour), {n_q} questions")
    table.add_column("layer", justify="right")
    for mu in mults:
        table.add_column(f"x{mu:g}", justify="right")
    for i, layer in enumerate(res.layers):
        table.add_row(str(layer), *[f"{float(grid[i, j]):.3f}" for j in range(len(mults))])
    console.print(table)
    collapsed = res.collapsed_cells()
    if collapsed:
        err_console.print(f"[yellow]collapsed cells[/yellow] (the same answer to every question, so p(matching) "
                          f"there only reflects the answer balance): {', '.join(collapsed)}")
    qps = f"{res.questions_per_second:.1f} questions/s" if res.questions_per_second else "all cells cached"
    console.print(f"wrote {out}/sweep.json, sweep.csv, sweep_heatmap.png, sweep_curves.png ({qps})")


@app.command()
def ablate(
    model: ModelArg,
    direction: Annotated[Path, typer.Option(help="Direction to ablate (a vector file).")],
    out: Annotated[Path, typer.Option(help="Folder for the orthogonalised model (HF format).")],
    layer: Annotated[int | None, typer.Option(help="Which layer of the vector file holds the direction "
                                                    "(default: its only / first layer).")] = None,
    layers: Annotated[str | None, typer.Option(help="Orthogonalise only these layers' attention and MLP output "
                                                    "weights (4-12, 4,8...; default: all layers and the "
                                                    "embeddings).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompts to show before/after.")]
    = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate for --prompt.")] = 40,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Bake a directional ablation into the weights and save the model (hooks are not needed afterwards)."""
    from ..jobs import ablate_weights

    m = load(model, dtype, device, gguf_file)
    with err_console.status(f"orthogonalising and saving to {out} ..."):
        res = ablate_weights(m, direction, out, layer=layer, layers=layers, prompts=prompt or [],
                             max_new_tokens=max_new_tokens)
    if res["generations"]:
        table = Table(title="directional ablation (weights orthogonalised)", show_lines=True)
        table.add_column("prompt", max_width=30)
        table.add_column("before")
        table.add_column("after")
        for g in res["generations"]:
            table.add_row(g["prompt"], g["before"], g["after"])
        console.print(table)
    console.print(f"wrote the orthogonalised model to {out}")


@app.command()
def refusal(
    model: ModelArg,
    harmful: Annotated[Path, typer.Option(help="Harmful training instructions (JSON/CSV).")],
    harmless: Annotated[Path, typer.Option(help="Harmless training instructions.")],
    out: Annotated[Path, typer.Option(help="Run folder.")],
    harmful_val: Annotated[Path | None, typer.Option(help="Harmful validation instructions (default: the "
                                                          "training file, after the training items).")] = None,
    harmless_val: Annotated[Path | None, typer.Option(help="Harmless validation instructions.")] = None,
    n_train: Annotated[int, typer.Option(help="Training instructions per set.")] = 128,
    n_val: Annotated[int, typer.Option(help="Validation instructions per set.")] = 32,
    positions: Annotated[str, typer.Option(help="eoi (every end-of-instruction token), eoi:-1, or - without a chat "
                                                "template - last or last:K (the last K prompt tokens).")] = "eoi",
    chat: ChatOpt = None,
    layers: LayersOpt = None,
    top_k: Annotated[int, typer.Option(help="Candidates checked by generation.")] = 8,
    kl_threshold: Annotated[float, typer.Option(help="Maximum KL on harmless prompts.")] = 0.1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per check.")] = 32,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 16,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Find, score, select and save the refusal direction (Arditi et al. 2024)."""
    from ..jobs import refusal as run_refusal
    from ..steering.refusal import RefusalConfig

    m = load(model, dtype, device, gguf_file)
    cfg = RefusalConfig(n_train=n_train, n_val=n_val, positions=positions, chat=chat,
                        layers=parse_layers(layers, m.n_layers),
                        batch_size=batch_size, kl_threshold=kl_threshold, top_k=top_k, max_new_tokens=max_new_tokens)
    res = run_refusal(m, harmful, harmless, out, harmful_val=harmful_val, harmless_val=harmless_val, config=cfg,
                      log=lambda s: err_console.print(s))
    console.print(f"selected layer {res.layer}, eoi position {res.eoi_position}; refusal rate on harmful "
                  f"validation prompts {res.refusal_rate_before:.2f} -> {res.refusal_rate_after:.2f} with the "
                  f"direction ablated. Wrote {out}/direction.safetensors, candidates.csv, scores.png")


@app.command("export-gguf")
def export_gguf(
    vector: Annotated[Path, typer.Argument(help="Steering vector (.safetensors).")],
    out: Annotated[Path, typer.Argument(help="Output .gguf control vector.")],
    model_hint: Annotated[str | None, typer.Option(help="Architecture hint stored in the file.")] = None,
    multiplier: Annotated[float, typer.Option(help="Scale baked into the file.")] = 1.0,
) -> None:
    """Export a resid_post vector as a llama.cpp control vector (--control-vector)."""
    from ..steering import SteeringVector

    vec = SteeringVector.load(vector)
    vec.to_gguf(out, model_hint=model_hint, multiplier=multiplier)
    skipped = " (layer 0 skipped: llama.cpp cannot steer it)" if 0 in vec.layers else ""
    console.print(f"wrote {out}{skipped}")


@app.command("import-gguf")
def import_gguf(
    control_vector: Annotated[Path, typer.Argument(help="llama.cpp control vector (.gguf).")],
    out: Annotated[Path, typer.Argument(help="Output .safetensors.")],
) -> None:
    """Import a llama.cpp control vector as an actlab vector (resid_post)."""
    from ..steering import SteeringVector

    vec = SteeringVector.from_gguf(control_vector)
    vec.save(out)
    console.print(f"wrote {out}: layers {vec.layers}, width {vec.d}")


@app.command()
def mix(
    model: ModelArg,
    source: Annotated[str, typer.Option(help="The prompt whose activation is mixed in.")],
    point: Annotated[str, typer.Option(help="Hook point, e.g. blocks.14.attn_out or blocks.10.resid_post.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt to generate from (repeat for several).")],
    scale: Annotated[float, typer.Option("--scale", "-s", help="Multiple of the source activation to add.")] = 1.0,
    position: Annotated[str, typer.Option(help="Source token to read: an index over its tokens (-1 = the last, as "
                                               "in the decoding study) or 'mean'.")] = "-1",
    positions: Annotated[str, typer.Option(help="Where to add it: all, generated or from_eoi.")] = "all",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 40,
    chat: ChatOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write a run folder with mix.json.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Activation mixing: add another prompt's activation at a hook point and compare generations."""
    from ..errors import InputError
    from ..jobs import mix_generate

    if position != "mean":
        try:
            pos: int | str = int(position)
        except ValueError:
            raise InputError(f"--position must be a token index (e.g. -1) or 'mean', not {position!r}") from None
    else:
        pos = position
    m = load(model, dtype, device, gguf_file)
    res = mix_generate(m, source, point, prompt, scale=scale, position=pos, positions=positions, chat=chat,
                       max_new_tokens=max_new_tokens, out=out)
    table = Table(title=f"mixing {source!r} at {point} (token {position}) x{scale:g}, positions={positions}",
                  show_lines=True)
    table.add_column("prompt", max_width=30)
    table.add_column("unmixed")
    table.add_column("mixed")
    for g in res["generations"]:
        table.add_row(g["prompt"], g["unmixed"], g["mixed"])
    console.print(table)
    if out:
        console.print(f"wrote {out}/mix.json")
