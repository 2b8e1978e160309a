"""``actlab steer ...``: extract, generate, sweep, mix, ablate, refusal, export-gguf, import-gguf."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

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
    distributed,
    load,
    opt,
    parse_floats,
    parse_layers,
    wrote,
)

app = typer.Typer(help="Extract steering vectors, steer generation, sweep behaviour, mix activations, ablate "
                       "directions, find the refusal direction.", no_args_is_help=True, rich_markup_mode=None)

READ_HELP = ("Read positions: answer (A/B), last, eoi (every end-of-instruction token), eoi:K, mean "
             "[default: answer / mean / eoi by format].")
STEER_HELP = ("Steered tokens: auto (from the end of the instruction in prompts that have one, else every token), "
              "all, from_eoi, generated or last:K (from the prompt's K-th last token).")
MinConfOpt = Annotated[float | None, opt("--min-confidence", metavar="X", help="Anthropic persona files: keep "
                                         "items whose label_confidence is at least this.")]
ChoicesOpt = Annotated[bool, opt("--as-choices", help="Render Yes/No (persona) items as A/B choices (letters "
                                 "balanced across items).")]
VectorOpt = Annotated[Path, opt("--vector", metavar="FILE", help="Steering vector (.safetensors or a GGUF "
                                "control vector).")]
MaxNewOpt = Annotated[int, opt("--max-new-tokens", metavar="N", help="Tokens to generate.")]


def _steer_positions(value: str) -> str:
    from ..hooks.positions import check_steer_positions

    return check_steer_positions(value)


def _prompts(prompts: list[str]) -> None:
    from ..errors import InputError

    for p in prompts:
        if not p.strip():
            raise InputError("a --prompt is empty; give some text")


def _vector(path: Path, multiplier: float, what: str = "--vector"):
    """A vector file read and checked before the model loads: finite, non-zero, and a multiple of it that fits a
    float32 activation."""
    from ..errors import InputError
    from ..steering.vector import SteeringVector

    vec = SteeringVector.load(path).check_values(f"the vector in {str(path)!r}")
    top = max(float(v.abs().max()) for v in vec.vectors.values()) * abs(multiplier)
    if not top < 3.4e38:
        raise InputError(f"{what} times the multiplier {multiplier:g} reaches {top:.3g}, beyond any float32 "
                         "activation; use a smaller multiplier")
    return vec


@app.command()
def extract(
    model: ModelArg,
    data: Annotated[Path, opt("--data", metavar="PATH", help="Dataset (A/B JSON/JSONL, pairs JSONL, or an "
                                                              "instruction list).")],
    out: Annotated[Path, opt("--out", metavar="FILE", help="Where to write the vector (.safetensors).")],
    format: Annotated[str, opt("--format", metavar="FORMAT", help="ab, pairs or instructions.")] = "ab",
    negative: Annotated[Path | None, opt("--negative", metavar="FILE", help="For --format instructions: the "
                                         "negative set (e.g. harmless).")] = None,
    point: Annotated[str, opt("--point", metavar="KIND", help="Hook-point kind to read (resid_post, resid_pre, "
                                                               "attn_out...).")] = "resid_post",
    layers: LayersOpt = None,
    method: Annotated[str, opt("--method", metavar="METHOD", help="mean_diff, pca or logreg.")] = "mean_diff",
    positions: Annotated[str | None, opt("--positions", metavar="POLICY", help=READ_HELP)] = None,
    chat: ChatOpt = None,
    limit: LimitOpt = None,
    batch_size: BatchOpt = 16,
    min_confidence: MinConfOpt = None,
    as_choices: ChoicesOpt = False,
    max_length: Annotated[int | None, opt("--max-length", metavar="N", help="Longest text in tokens [default: the "
                                          "model's context].")] = None,
    truncate: Annotated[str, opt("--truncate", metavar="POLICY", help="Texts longer than --max-length: error, "
                                 "skip (drop the pair) or left (keep the last tokens).")] = "error",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Extract a steering vector from a contrastive dataset in one batched pass."""
    from ..hooks.points import block_kind
    from ..jobs import extract_vector
    from ..jobs.steering import FORMATS, read_contrast
    from ..steering.extraction import METHODS, TRUNCATE
    from ..steering.prompts import check_read_policy

    checks.input_file(data, "--data file")
    checks.choice(format, "--format", FORMATS)
    if format == "instructions" and negative is None:
        from ..errors import InputError

        raise InputError("--format instructions needs --negative FILE (e.g. the harmless instructions)")
    checks.input_file(negative, "--negative file")
    checks.output_file(out, "--out file")
    block_kind(point)
    checks.layer_syntax(layers)
    checks.choice(method, "--method", METHODS)
    checks.choice(truncate, "--truncate", TRUNCATE)
    checks.positive(limit, "--limit")
    checks.positive(batch_size, "--batch-size")
    checks.positive(max_length, "--max-length")
    if min_confidence is not None:
        checks.finite(min_confidence, "--min-confidence")
    if positions is not None:
        check_read_policy(positions)
    contrast = read_contrast(data, format=format, negative=negative, limit=limit, min_confidence=min_confidence,
                             as_choices=as_choices)  # the whole dataset checked before the model loads
    rank, _ = distributed(device)  # under torchrun: each process reads a block of the texts
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    vec = extract_vector(m, contrast, out, format=format, negative=negative, point=point, layers=layers, method=method,
                         positions=positions, chat=chat, limit=limit, batch_size=batch_size,
                         min_confidence=min_confidence, as_choices=as_choices, max_length=max_length,
                         truncate=truncate)
    if rank != 0:
        return
    norms = vec.norms()
    console.print(f"wrote {out}: {len(norms)} layers at {point}, method {method}, positions {vec.meta['positions']}, "
                  f"{vec.meta.get('n_positive')} contrasts; norms {min(norms.values()):.3g}.."
                  f"{max(norms.values()):.3g}", highlight=False)


@app.command()
def generate(
    model: ModelArg,
    vector: VectorOpt,
    prompt: Annotated[list[str], opt("--prompt", "-p", metavar="TEXT", help="Prompt (repeat for several).")],
    layers: LayersOpt = None,
    multiplier: Annotated[float, opt("--multiplier", "-m", metavar="X", help="Scale of the vector.")] = 4.0,
    positions: Annotated[str, opt("--positions", metavar="POLICY", help=STEER_HELP)] = "auto",
    max_new_tokens: MaxNewOpt = 40,
    chat: ChatOpt = None,
    sample: Annotated[bool, opt("--sample/--greedy", help="Sample (seeded) or greedy.")] = False,
    seed: Annotated[int, opt("--seed", metavar="N", help="Seed for sampling.")] = 0,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Generate with and without steering and print them side by side."""
    from rich.table import Table

    from ..jobs import generate as run_generate

    checks.input_file(vector, "--vector file")
    checks.layer_syntax(layers)
    checks.finite(multiplier, "--multiplier")
    _steer_positions(positions)
    checks.positive(max_new_tokens, "--max-new-tokens")
    checks.seed(seed)
    _prompts(prompt)
    vec = _vector(vector, multiplier)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    checks.generation_length(m, max_new_tokens)
    rows = run_generate(m, vec, prompt, multiplier=multiplier, layers=layers, positions=positions,
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
    vector: VectorOpt,
    data: Annotated[Path, opt("--data", metavar="PATH", help="Held-out A/B questions (CAA JSON / Anthropic "
                                                              "JSONL).")],
    out: Annotated[Path, opt("--out", metavar="DIR", help="Run folder (sweep.json, sweep.csv, PNGs, run.json).")],
    layers: LayersOpt = None,
    multipliers: Annotated[str, opt("--multipliers", metavar="LIST", help="Comma-separated multipliers.")]
    = "-2,-1,0,1,2",
    positions: Annotated[str, opt("--positions", metavar="POLICY", help=STEER_HELP)] = "auto",
    chat: ChatOpt = None,
    limit: LimitOpt = None,
    overwrite: Annotated[bool, opt("--overwrite", help="Recompute cells already in sweep.json.")] = False,
    batch_size: BatchOpt = 16,
    min_confidence: MinConfOpt = None,
    as_choices: ChoicesOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """p(answer matching behaviour) under steering, for each layer x multiplier, with collapse diagnostics."""
    from rich.table import Table

    from ..errors import InputError
    from ..jobs import sweep as run_sweep

    checks.input_file(vector, "--vector file")
    checks.input_file(data, "--data file")
    checks.output_dir(out, "--out folder")
    checks.layer_syntax(layers)
    mults = parse_floats(multipliers)
    if _steer_positions(positions) == "generated":
        raise InputError("--positions generated steers nothing in a one-forward A/B evaluation; use auto, "
                         "from_eoi or all")
    checks.positive(limit, "--limit")
    checks.positive(batch_size, "--batch-size")
    if min_confidence is not None:
        checks.finite(min_confidence, "--min-confidence")
    from ..data import load_ab
    from ..jobs.common import FromFile

    vec = _vector(vector, max(abs(x) for x in mults))
    items = FromFile(load_ab(data, limit=limit, min_confidence=min_confidence, as_choices=as_choices), data)
    rank, _ = distributed(device)  # under torchrun: each process evaluates a block of the questions
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    res = run_sweep(m, vec, items, out, layers=layers, multipliers=mults, positions=positions, chat=chat,
                    limit=limit, overwrite=overwrite, batch_size=batch_size, min_confidence=min_confidence,
                    as_choices=as_choices)
    if rank != 0:
        return
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
        console.print(f"collapsed cells (the same answer to every question, so p(matching) there only reflects the "
                      f"answer balance): {', '.join(collapsed)}", highlight=False)
    unmoved = res.unmoved()
    if unmoved is not None:
        key, shift = unmoved
        base = res.baseline() or {}
        console.print(f"no steered cell differs from the unsteered one (p {base['p_matching']:.3f}) by more than two "
                      f"standard errors (largest shift {shift:+.3f}, at {key}): the vector does not move this "
                      f"model's A/B answers at these layers and multipliers. Small models often answer A/B near "
                      f"chance (here the first letter, {base['first_label']}, gets p {base['p_first']:.2f} on "
                      f"average); try larger multipliers, other layers, or `steer generate` on open-ended prompts.",
                      highlight=False)
    qps = (f"{res.questions_per_second:.2g} questions/s through {len(res.cells)} cells, "
           f"{res.evaluations_per_second:.2g} evaluations/s" if res.questions_per_second else "all cells cached")
    wrote(f"{out}/sweep.json", "sweep.csv", "sweep_heatmap.png", f"sweep_curves.png ({qps})")


@app.command()
def mix(
    model: ModelArg,
    source: Annotated[str, opt("--source", metavar="TEXT", help="The prompt whose activation is mixed in.")],
    point: Annotated[str, opt("--point", metavar="POINT", help="Hook point, e.g. blocks.14.attn_out.")],
    prompt: Annotated[list[str], opt("--prompt", "-p", metavar="TEXT", help="Prompt to generate from (repeat for "
                                                                              "several).")],
    scale: Annotated[float, opt("--scale", "-s", metavar="X", help="Multiple of the source activation to add.")]
    = 1.0,
    position: Annotated[str, opt("--position", metavar="INDEX", help="Source token to read: an index over its "
                                 "tokens (-1 = the last, as in the decoding study) or 'mean'.")] = "-1",
    positions: Annotated[str, opt("--positions", metavar="POLICY", help=STEER_HELP)] = "auto",
    max_new_tokens: MaxNewOpt = 40,
    chat: ChatOpt = None,
    out: Annotated[Path | None, opt("--out", metavar="DIR", help="Also write a run folder with mix.json "
                                    "(mix_sweep.json with --sweep-layers).")] = None,
    sweep_layers: Annotated[str | None, opt("--sweep-layers", metavar="LAYERS", help="Mix at each of these layers "
                                            "in turn (--point is then a kind, e.g. resid_post) and recommend the "
                                            "first where the source's concept decodes under the logit lens.")]
    = None,
    concept: Annotated[str | None, opt("--concept", metavar="TOKEN", help="With --sweep-layers: the concept token "
                                       "(one token, e.g. ' Paris') [default: the source's own next-token "
                                       "prediction].")] = None,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="With --sweep-layers: the concept 'decodes' once it is "
                              "in the lens's top K.")] = 5,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Activation mixing: add another prompt's activation at a hook point and compare generations (at one
    point, or at every layer of --sweep-layers with the logit lens's layer recommendation)."""
    from rich.table import Table

    from ..errors import InputError
    from ..jobs import mix_generate

    if not source.strip():
        raise InputError("--source is empty; give the prompt to mix in")
    if sweep_layers is not None:
        from ..hooks.points import block_kind

        if point.startswith("blocks."):
            raise InputError(f"with --sweep-layers, --point is a kind (e.g. resid_post), not {point!r}")
        block_kind(point)
        checks.layer_syntax(sweep_layers, "--sweep-layers")
        checks.positive(top_k, "--top-k")
    else:
        if concept is not None:
            raise InputError("--concept names what --sweep-layers looks for; give --sweep-layers too")
        checks.point_syntax(point)
    checks.finite(scale, "--scale")
    pos = mix_position(position, "--position")
    _steer_positions(positions)
    checks.positive(max_new_tokens, "--max-new-tokens")
    checks.output_dir(out, "--out folder")
    _prompts(prompt)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    checks.generation_length(m, max_new_tokens)
    if sweep_layers is not None:
        _mix_sweep(m, source, point, prompt, sweep_layers, scale, pos, positions, chat, concept, top_k,
                   max_new_tokens, out)
        return
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
        wrote(out / "mix.json")


def mix_position(position: str, what: str) -> int | str:
    """The source token activation mixing reads: an index over its tokens, or 'mean'."""
    if position == "mean":
        return position
    try:
        return int(position)
    except ValueError:
        from ..errors import InputError

        raise InputError(f"{what} must be a token index (e.g. -1) or 'mean', not {position!r}") from None


def _mix_sweep(m: Any, source: str, kind: str, prompts: list[str], layers: str, scale: float, position: int | str,
               positions: str, chat: bool | None, concept: str | None, top_k: int, max_new_tokens: int,
               out: Path | None) -> None:
    from rich.table import Table

    from ..hooks.points import parse_layers as parse
    from ..jobs.steering import mix_sweep

    target: str | int | None = concept
    if concept is not None and concept.lstrip("-").isdigit():
        target = int(concept)
    res = mix_sweep(m, source, kind, prompts, layers=parse(layers, m.n_layers, what="--sweep-layers"), scale=scale,
                    position=position, positions=positions, chat=chat, concept=target, top_k=top_k,
                    max_new_tokens=max_new_tokens, out=out)
    table = Table(title=f"mixing {source!r} at {kind} x{scale:g}, layer by layer; concept "
                        f"{res['concept']['token']!r}", show_lines=False)
    for col in ("layer", "lens rank", "p(concept) mixed", "unmixed", "first mixed generation"):
        table.add_column(col)
    for r in res["layers"]:
        table.add_row(str(r["layer"]), str(r["lens_rank"]), f"{r['concept_prob_mixed']:.3f}",
                      f"{r['concept_prob_unmixed']:.3f}", r["generations"][0])
    console.print(table)
    rec = res["recommended_layer"]
    console.print(f"recommended mixing layer: {rec} ({res['rule']})" if rec is not None else
                  f"no layer recommended: {res['concept']['token']!r} never reaches the lens's top {top_k}",
                  highlight=False)
    if out:
        wrote(out / "mix_sweep.json", "mix_sweep.png")


@app.command()
def ablate(
    model: ModelArg,
    direction: Annotated[Path, opt("--direction", metavar="FILE", help="Direction to ablate (a vector file).")],
    out: Annotated[Path, opt("--out", metavar="DIR", help="Folder for the orthogonalised model (HF format).")],
    layer: Annotated[int | None, opt("--direction-layer", "--layer", metavar="N", help="Which layer of the "
                                     "vector file holds the direction [default: its only / first layer] "
                                     "(not where it is removed: see --layers).")] = None,
    layers: Annotated[str | None, opt("--layers", metavar="LAYERS", help="Orthogonalise only these layers' "
                                      "attention and MLP output weights [default: all layers and the "
                                      "embeddings].")] = None,
    prompt: Annotated[list[str] | None, opt("--prompt", "-p", metavar="TEXT", help="Prompts to show before and "
                                            "after.")] = None,
    max_new_tokens: MaxNewOpt = 40,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Bake a directional ablation into the weights and save the model (in the checkpoint's dtype)."""
    from rich.table import Table

    from ..jobs import ablate_weights

    checks.input_file(direction, "--direction file")
    checks.output_dir(out, "--out folder")
    checks.layer_syntax(layers)
    checks.positive(max_new_tokens, "--max-new-tokens")
    vec = _vector(direction, 1.0, "--direction")
    if layer is not None:
        vec[layer]  # a layer the file lacks: one line naming the layers it has
    if prompt:
        _prompts(prompt)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    if vec.d != m.d_model:
        from ..errors import InputError

        raise InputError(f"the direction in {str(direction)!r} is {vec.d} wide but {m.name!r} has d_model "
                         f"{m.d_model}; it belongs to another model")
    res = ablate_weights(m, vec, out, layer=layer, layers=layers, prompts=prompt or [],
                         max_new_tokens=max_new_tokens)
    if res["generations"]:
        table = Table(title="directional ablation (weights orthogonalised)", show_lines=True)
        table.add_column("prompt", max_width=30)
        table.add_column("before")
        table.add_column("after")
        for g in res["generations"]:
            table.add_row(g["prompt"], g["before"], g["after"])
        console.print(table)
    console.print(f"wrote the orthogonalised model to {out}", highlight=False)


@app.command()
def refusal(
    model: ModelArg,
    harmful: Annotated[Path, opt("--harmful", metavar="FILE", help="Harmful training instructions (JSON/CSV).")],
    harmless: Annotated[Path, opt("--harmless", metavar="FILE", help="Harmless training instructions.")],
    out: Annotated[Path, opt("--out", metavar="DIR", help="Run folder.")],
    harmful_val: Annotated[Path | None, opt("--harmful-val", metavar="FILE", help="Harmful validation "
                                            "instructions [default: the training file after --n-train].")] = None,
    harmless_val: Annotated[Path | None, opt("--harmless-val", metavar="FILE", help="Harmless validation "
                                             "instructions.")] = None,
    n_train: Annotated[int, opt("--n-train", metavar="N", help="Training instructions per set.")] = 128,
    n_val: Annotated[int, opt("--n-val", metavar="N", help="Validation instructions per set.")] = 32,
    positions: Annotated[str, opt("--positions", metavar="POLICY", help="eoi (every end-of-instruction token), "
                                  "eoi:K, or - without a chat template - last or last:K (the last K tokens).")]
    = "eoi",
    chat: ChatOpt = None,
    layers: LayersOpt = None,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="Candidates checked by generation.")] = 8,
    kl_threshold: Annotated[float, opt("--kl-threshold", metavar="X", help="Maximum KL on harmless prompts.")]
    = 0.1,
    max_new_tokens: Annotated[int, opt("--max-new-tokens", metavar="N", help="Tokens generated per check.")] = 32,
    batch_size: BatchOpt = 16,
    overwrite: Annotated[bool, opt("--overwrite", help="Recompute the candidate directions a run in this folder "
                                   "saved.")] = False,
    newline: Annotated[bool, opt("--newline", help="Prompt each instruction followed by just a newline (no chat "
                                 "template); the newline is the end-of-instruction token.")] = False,
    subsets: Annotated[str | None, opt("--ablation-subsets", metavar="SPECS", help="Semicolon-separated layer "
                                       "subsets (e.g. '0-5;6-11;all'): the refusal rate with the selected direction "
                                       "ablated only there, per subset.")] = None,
    rounds: Annotated[int, opt("--rounds", metavar="K", help="Iterative directions: ablate the directions found so "
                               "far, extract again at the selected layer and position, K rounds in all.")] = 1,
    harmfulness: Annotated[bool, opt("--harmfulness", help="Also read a harmfulness direction at the "
                                     "instruction's last token (refused harmful minus answered harmless) and "
                                     "compare it with the refusal direction.")] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Find, score, select and save the refusal direction (Arditi et al. 2024); optionally study it further
    (ablation per layer subset, iterative rounds, harmfulness vs refusal)."""
    from ..jobs import refusal as run_refusal
    from ..steering.refusal import RefusalConfig

    for f, what in ((harmful, "--harmful"), (harmless, "--harmless"), (harmful_val, "--harmful-val"),
                    (harmless_val, "--harmless-val")):
        checks.input_file(f, f"{what} file")
    checks.output_dir(out, "--out folder")
    for v, what in ((n_train, "--n-train"), (n_val, "--n-val"), (top_k, "--top-k"),
                    (max_new_tokens, "--max-new-tokens"), (batch_size, "--batch-size"),
                    (kl_threshold, "--kl-threshold"), (rounds, "--rounds")):
        checks.positive(v, what)
    checks.layer_syntax(layers)
    _refusal_positions(positions)
    subset_specs = [p.strip() for p in subsets.split(";")] if subsets is not None else []
    for spec in subset_specs:
        checks.layer_syntax(spec, "--ablation-subsets")
    from ..data import load_instructions
    from ..jobs.common import FromFile

    lists = {what: FromFile(load_instructions(f), f) if f is not None else None for f, what in (
        (harmful, "harmful"), (harmless, "harmless"), (harmful_val, "harmful_val"), (harmless_val, "harmless_val"))}
    for what in ("harmful", "harmless"):  # what the pipeline needs, counted before the model loads
        need = n_train + (0 if lists[f"{what}_val"] is not None else n_val)
        if len(lists[what]) < n_train + 1 and lists[f"{what}_val"] is None:
            from ..errors import InputError

            raise InputError(f"--{what} has {len(lists[what])} instructions: --n-train {n_train} leaves none to "
                             f"validate on (give --{what}-val, or a smaller --n-train; {need} would fill both)")
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    cfg = RefusalConfig(n_train=n_train, n_val=n_val, positions=positions, chat=chat,
                        layers=parse_layers(layers, m.n_layers), batch_size=batch_size, kl_threshold=kl_threshold,
                        top_k=top_k, max_new_tokens=max_new_tokens, newline=newline, subsets=subset_specs,
                        rounds=rounds, harmfulness=harmfulness)
    from ..hooks.points import parse_layers as parse_subset

    for spec in subset_specs:
        parse_subset(spec, m.n_layers, what="--ablation-subsets")
    res = run_refusal(m, lists["harmful"], lists["harmless"], out, harmful_val=lists["harmful_val"],
                      harmless_val=lists["harmless_val"], config=cfg, overwrite=overwrite)
    console.print(f"selected layer {res.layer}, position {res.eoi_position}; refusal rate on harmful validation "
                  f"prompts {res.refusal_rate_before:.2f} -> {res.refusal_rate_after:.2f} with the direction "
                  f"ablated", highlight=False)
    if res.refusal_rate_before < 0.1:
        console.print(f"note: the model refused {res.refusal_rate_before:.0%} of the harmful validation prompts "
                      "before ablation, so there is little refusal to remove; the direction's scores are in "
                      "candidates.csv and the report. A chat model that refuses (with --chat) shows the effect.",
                      highlight=False)
    after = res.classes_after
    console.print(f"after ablation: {after.get('refusal', 0)} refusals, {after.get('refuse_then_comply', 0)} "
                  f"refuse-then-comply, {after.get('comply', 0)} answers", highlight=False)
    wrote(f"{out}/direction.safetensors", "candidates.csv", "scores.png",
          *(["refusal_study.json"] if res.study else []))


def _refusal_positions(spec: str) -> None:
    import re

    from ..errors import InputError

    if not re.fullmatch(r"eoi|eoi:-?\d+|last|last:\d+", spec):
        raise InputError(f"unknown refusal positions {spec!r}; valid: eoi, eoi:K (e.g. eoi:-1), last, last:K")


@app.command("export-gguf")
def export_gguf(
    vector: Annotated[Path, typer.Argument(help="Steering vector (.safetensors).", metavar="VECTOR",
                                           show_default=False)],
    out: Annotated[Path, typer.Argument(help="Output .gguf control vector.", metavar="OUT", show_default=False)],
    model_hint: Annotated[str | None, opt("--model-hint", metavar="NAME", help="Architecture hint stored in the "
                                          "file.")] = None,
    multiplier: Annotated[float, opt("--multiplier", metavar="X", help="Scale baked into the file.")] = 1.0,
) -> None:
    """Export a resid_post vector as a llama.cpp control vector (--control-vector)."""
    from ..steering import SteeringVector

    checks.input_file(vector, "vector file")
    checks.output_file(out, "output file", inputs=[vector])
    checks.finite(multiplier, "--multiplier")
    vec = SteeringVector.load(vector).check_values(f"the vector in {str(vector)!r}")
    vec.to_gguf(out, model_hint=model_hint, multiplier=multiplier)
    skipped = " (layer 0 skipped: llama.cpp cannot steer it)" if 0 in vec.layers else ""
    console.print(f"wrote {out}{skipped}", highlight=False)


@app.command("import-gguf")
def import_gguf(
    control_vector: Annotated[Path, typer.Argument(help="llama.cpp control vector (.gguf).", metavar="GGUF",
                                                   show_default=False)],
    out: Annotated[Path, typer.Argument(help="Output .safetensors.", metavar="OUT", show_default=False)],
) -> None:
    """Import a llama.cpp control vector as an actlab vector (resid_post)."""
    from ..steering import SteeringVector

    checks.input_file(control_vector, "control vector")
    checks.output_file(out, "output file", inputs=[control_vector])
    vec = SteeringVector.from_gguf(control_vector)
    vec.save(out)
    console.print(f"wrote {out}: layers {vec.layers}, width {vec.d}", highlight=False)
