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
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Extract a steering vector from a contrastive dataset in one batched pass."""
    from ..errors import InputError
    from ..steering import (
        contrast_from_ab,
        contrast_from_instructions,
        contrast_from_pairs,
        load_ab,
        load_instructions,
        load_pairs,
        resolve_style,
    )
    from ..steering import (
        extract as do_extract,
    )
    from ..steering.prompts import PromptStyle

    m = load(model, dtype, device, gguf_file)
    lay = parse_layers(layers, m.n_layers)
    if format == "ab":
        style = resolve_style(m, chat)
        cs = contrast_from_ab(m, load_ab(data, limit=limit), style, positions or "answer")
    elif format == "pairs":
        style = PromptStyle(chat=False) if not chat else resolve_style(m, True)
        cs = contrast_from_pairs(m, load_pairs(data, limit=limit), style, positions or "mean")
    elif format == "instructions":
        if negative is None:
            raise InputError("--format instructions needs --negative FILE (e.g. the harmless instructions)")
        style = resolve_style(m, True if chat is None else chat)
        cs = contrast_from_instructions(m, load_instructions(data, limit=limit),
                                        load_instructions(negative, limit=limit), style, positions or "eoi")
    else:
        raise InputError(f"unknown dataset format {format!r}; valid: ab, pairs, instructions")
    total = len(cs.positive) + len(cs.negative)
    with progress_bar(f"extracting {method} at {point}", total) as advance:
        vec = do_extract(m, cs, layers=lay, point=point, method=method, batch_size=batch_size, progress=advance)
    vec.meta["dataset"]["file"] = str(data)
    vec.save(out)
    norms = vec.norms()
    console.print(f"wrote {out}: {len(norms)} layers at {point}, method {method}, positions {cs.policy}, "
                  f"{len(cs)} contrasts; norms {min(norms.values()):.3g}..{max(norms.values()):.3g}")


@app.command()
def generate(
    model: ModelArg,
    vector: Annotated[Path, typer.Option(help="Steering vector (.safetensors or GGUF control vector).")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt (repeat for several).")],
    layer: Annotated[list[int] | None, typer.Option(help="Layer(s) to steer (default: all the vector has).")]
    = None,
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
    from ..steering import SteeringVector, resolve_style
    from ..steering.evaluate import steered_generations

    m = load(model, dtype, device, gguf_file)
    vec = SteeringVector.load(vector)
    layers = layer or vec.layers
    style = resolve_style(m, chat)
    rows = steered_generations(m, prompt, vec, layers=layers, multipliers=[0.0, multiplier], style=style,
                               positions=positions, max_new_tokens=max_new_tokens, do_sample=sample, seed=seed)
    n = len(prompt)
    table = Table(title=f"steering at layers {layers}, x{multiplier:g}, positions={positions}", show_lines=True)
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
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """p(answer matching behaviour) under steering, for each layer x multiplier."""
    from ..steering import SteeringVector, load_ab, resolve_style
    from ..steering.evaluate import ab_sweep

    m = load(model, dtype, device, gguf_file)
    vec = SteeringVector.load(vector)
    lay = parse_layers(layers, m.n_layers) or vec.layers
    mults = parse_floats(multipliers)
    items = load_ab(data, limit=limit)
    with progress_bar("sweep cells", len(lay) * len(mults)) as advance:
        res = ab_sweep(m, vec, items, layers=lay, multipliers=mults, style=resolve_style(m, chat),
                       positions=positions, out_dir=out, overwrite=overwrite, batch_size=batch_size, progress=advance)
    grid = res.grid()
    table = Table(title=f"p(matching behaviour), {len(items)} questions")
    table.add_column("layer", justify="right")
    for mu in mults:
        table.add_column(f"x{mu:g}", justify="right")
    for i, layer in enumerate(lay):
        table.add_row(str(layer), *[f"{float(grid[i, j]):.3f}" for j in range(len(mults))])
    console.print(table)
    qps = f"{res.questions_per_second:.1f} questions/s" if res.questions_per_second else "all cells cached"
    console.print(f"wrote {out}/sweep.json, sweep.csv, sweep_heatmap.png, sweep_curves.png ({qps})")


@app.command()
def ablate(
    model: ModelArg,
    direction: Annotated[Path, typer.Option(help="Direction to ablate (a vector file).")],
    out: Annotated[Path, typer.Option(help="Folder for the orthogonalised model (HF format).")],
    layer: Annotated[int | None, typer.Option(help="Which layer of the vector file holds the direction "
                                                    "(default: its only / first layer).")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="Prompts to show before/after.")]
    = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate for --prompt.")] = 40,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Bake a directional ablation into the weights and save the model (hooks are not needed afterwards)."""
    from ..steering import SteeringVector, orthogonalize

    m = load(model, dtype, device, gguf_file)
    vec = SteeringVector.load(direction)
    d = vec[layer if layer is not None else vec.layers[0]]
    texts = [m.chat_prompt(p) if m.tokenizer.chat_template else p for p in prompt or []]
    before = m.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=False) if texts else []
    orth = orthogonalize(m, d, copy_model=False)
    with err_console.status(f"saving to {out} ..."):
        orth.save(out)
    if texts:
        after = orth.generate_text(texts, max_new_tokens=max_new_tokens, add_special_tokens=False)
        table = Table(title="directional ablation (weights orthogonalised)", show_lines=True)
        table.add_column("prompt", max_width=30)
        table.add_column("before")
        table.add_column("after")
        for p, b, a in zip(prompt or [], before, after, strict=True):
            table.add_row(p, b, a)
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
    positions: Annotated[str, typer.Option(help="eoi (every end-of-instruction token) or eoi:-1.")] = "eoi",
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
    from ..runs import init_run_dir
    from ..steering import load_instructions
    from ..steering.refusal import RefusalConfig, refusal_pipeline

    m = load(model, dtype, device, gguf_file)
    h_all = load_instructions(harmful)
    n_all = load_instructions(harmless)
    hv = load_instructions(harmful_val) if harmful_val else h_all[n_train:]
    nv = load_instructions(harmless_val) if harmless_val else n_all[n_train:]
    cfg = RefusalConfig(n_train=n_train, n_val=n_val, positions=positions, layers=parse_layers(layers, m.n_layers),
                        batch_size=batch_size, kl_threshold=kl_threshold, top_k=top_k, max_new_tokens=max_new_tokens)
    init_run_dir(out, config={"command": "steer refusal", "model": model, "harmful": str(harmful),
                              "harmless": str(harmless), **{k: v for k, v in vars(cfg).items()
                                                            if k != "refusal_phrases"}}, seed=cfg.seed)
    res = refusal_pipeline(m, h_all, n_all, hv, nv, config=cfg, out_dir=out, log=lambda s: err_console.print(s))
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
