"""The Typer application: commands in workflow order (info, lens, demo, steer, layers, compare, project-vocab,
diverge, acts, sae, finetune, lfp, report), and the foundation commands ``info``, ``lens``, ``demo``,
``report``. The vocabulary every command shares is documented once, in docs/cli.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument

from .common import (
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    MaxMemOpt,
    ModelArg,
    checks,
    console,
    err_console,
    load,
    opt,
    placement,
    split_list,
    wrote,
)


def _usage_name(self: TyperArgument) -> str:
    """Conventional usage: ``MODEL`` for a required argument, ``[MODEL]`` for an optional one (Typer 0.29 writes
    ``{MODEL}`` and a ``<str>`` type beside it)."""
    name = self.display_name_raw
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


TyperArgument._usage_display_name = _usage_name  # type: ignore[method-assign]
TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign,assignment]

app = typer.Typer(
    name="actlab",
    help="Activation-engineering workbench for Hugging Face causal LMs: read, steer, compare, decompose, audit. "
         "Global flags anywhere on the line: -v/--verbose (third-party logs too), -q/--quiet (errors and "
         "warnings only), --debug (tracebacks for every error). actlab --version prints the versions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command and group
)


@app.command()
def info(model: ModelArg, dtype: DtypeOpt = None, device: DeviceOpt = None, gguf_file: GgufOpt = None,
         device_map: DeviceMapOpt = None, max_memory: MaxMemOpt = None) -> None:
    """Print a model's architecture, layer count, widths and hook points."""
    from rich.table import Table

    from ..errors import HookPointError
    from ..hooks.points import BLOCK_KINDS, GLOBAL_POINTS

    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    a = m.adapter
    how = ("derived from its module tree and a probe forward (docs/support.md)" if a.derived
           else f"hand-written ({a.family}, docs/adapters.md)")
    if a.blocks_only:
        how += f"; BLOCK OUTPUTS ONLY: {a.blocks_only}"
    if a.carried_state:
        how += f"; CARRIED STATE: {m.carried_note()}"
    checked = "; ".join(f"{k} (rel. error {v:.1e})" for k, v in m.validation.items()) or "not run"
    try:
        d_mlp: object = m.d_mlp
    except HookPointError:
        d_mlp = "- (no single MLP down projection: mixture of experts)"
    t = Table(show_header=False, box=None)
    for k, v in [("model", m.name), ("architecture", type(m.hf).__name__), ("family", a.family),
                 ("adapter", how), ("validated at load", checked),
                 ("layers", m.n_layers), ("d_model", m.d_model), ("d_mlp", d_mlp), ("vocab", m.vocab_size),
                 ("context", m.context_length), ("parallel residual", m.parallel), ("dtype", str(m.dtype)),
                 ("checkpoint dtype", m.source.get("checkpoint_dtype", "-")), ("device", str(m.device))]:
        t.add_row(f"[bold]{k}[/bold]", str(v))
    console.print(t)
    console.print(f"[bold]hook points[/bold]: {', '.join(GLOBAL_POINTS)}, and for each layer i in "
                  f"0..{m.n_layers - 1}: " + ", ".join(f"blocks.{{i}}.{k}" for k in BLOCK_KINDS))
    console.print(f"({len(m.hook_points)} in all)")


def _lens_mix(source: str | None, point: str | None, scale: float, position: str, positions: str, chat: bool
              ) -> Any:
    """The lens's --mix-* options as a Mix intervention (or None), checked before the model loads."""
    from ..errors import InputError

    if source is None:
        if point is not None:
            raise InputError("--mix-point says where --mix-source is added; give --mix-source too")
        return None
    if not source.strip():
        raise InputError("--mix-source is empty; give the prompt to mix in")
    if point is None:
        raise InputError("--mix-source needs --mix-point (e.g. blocks.1.resid_post)")
    checks.point_syntax(point)
    checks.finite(scale, "--mix-scale")
    if positions == "generated":
        raise InputError("--positions generated mixes nothing in the lens's one forward over the prompt; use auto, "
                         "all or from_eoi")
    from ..steering.apply import Mix
    from .steer import mix_position

    return Mix(source, point, scale, position=mix_position(position, "--mix-position"), positions=positions,
               chat=chat)


@app.command()
def lens(
    model: ModelArg,
    prompt: Annotated[list[str], opt("--prompt", "-p", help="Prompt text (repeat for a batch).", metavar="TEXT")],
    points: Annotated[list[str] | None, opt("--points", metavar="POINTS", help="Hook points or kinds, "
                                            "comma-separated [default: resid_post,attn_out,mlp_out].")] = None,
    position: Annotated[int, opt("--position", metavar="INDEX", help="Token position over real tokens "
                                                                      "(-1 = last).")] = -1,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="Tokens per layer.")] = 5,
    target: Annotated[str | None, opt("--target", metavar="TOKEN", help="Target token (one token, e.g. ' Paris') "
                                                                          "or its id.")] = None,
    chat: Annotated[bool, opt("--chat/--no-chat", help="Wrap each prompt in the chat template (off by default, "
                              "unlike the other commands: the lens reads a completion prompt as written, e.g. "
                              "'The capital of France is').")] = False,
    json_out: Annotated[Path | None, opt("--json", metavar="FILE", help="Write the full result as JSON.")] = None,
    html_out: Annotated[Path | None, opt("--html", metavar="FILE", help="Write an offline HTML page.")] = None,
    lens_spec: Annotated[str, opt("--lens", metavar="LENS", help="'logit', or 'tuned:DIR' for a tuned lens (trained "
                                  "by `actlab tuned-lens`, or a released tuned-lens folder).")] = "logit",
    grid_out: Annotated[Path | None, opt("--grid", metavar="FILE", help="Also write every layer x position of the "
                                         "first prompt, at the first kind of --points (the playground's lens grid "
                                         "JSON).")] = None,
    vector: Annotated[Path | None, opt("--vector", metavar="FILE", help="Read a steered run: add this steering "
                                       "vector (as `steer generate` does) while the lens reads.")] = None,
    layers: Annotated[str | None, opt("--layers", metavar="LAYERS", help="With --vector: the layers to steer "
                                      "at (all, 4, 4,8, 4-12, 4-12:2) [default: every layer the vector holds].")]
    = None,
    multiplier: Annotated[float, opt("--multiplier", "-m", metavar="X", help="With --vector: its scale.")] = 4.0,
    positions: Annotated[str, opt("--positions", metavar="POLICY", help="With --vector: the steered tokens (auto, "
                                  "all, from_eoi).")] = "auto",
    ablate: Annotated[Path | None, opt("--ablate", metavar="FILE", help="Read an ablated run: project this "
                                       "direction (e.g. runs/refusal/direction.safetensors; a multi-layer vector: "
                                       "its first layer) out of every block's input and attention/MLP output.")]
    = None,
    mix_source: Annotated[str | None, opt("--mix-source", metavar="TEXT", help="Read a mixed run: add this "
                                          "prompt's activation at --mix-point (as `steer mix` does).")] = None,
    mix_point: Annotated[str | None, opt("--mix-point", metavar="POINT", help="With --mix-source: the hook point "
                                         "(e.g. blocks.1.resid_post).")] = None,
    mix_scale: Annotated[float, opt("--mix-scale", metavar="X", help="With --mix-source: the multiple added.")]
    = 1.0,
    mix_position: Annotated[str, opt("--mix-position", metavar="INDEX", help="With --mix-source: the source "
                                     "token read (-1 = the last) or 'mean'.")] = "-1",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Logit lens: decode hook points through the final norm and unembedding, layer by layer (of a steered,
    ablated or mixed run with --vector / --ablate / --mix-source)."""
    from rich.table import Table

    from ..jobs.lenses import DEFAULT_POINTS
    from ..jobs.lenses import lens as run_lens

    pts = split_list(points) or [DEFAULT_POINTS]
    checks.point_syntax(pts)
    checks.positive(top_k, "--top-k")
    checks.output_file(json_out, "--json file")
    checks.output_file(html_out, "--html file")
    checks.output_file(grid_out, "--grid file")
    if lens_spec != "logit":
        if not lens_spec.startswith("tuned:"):
            from ..errors import InputError

            raise InputError(f"unknown --lens {lens_spec!r}; valid: logit, tuned:DIR")
        checks.input_dir(Path(lens_spec[len("tuned:"):]), "--lens tuned: folder")
    if any(not p.strip() for p in prompt):
        from ..errors import InputError

        raise InputError("a --prompt is empty; give some text")
    if layers is not None and vector is None:
        from ..errors import InputError

        raise InputError("--layers chooses where --vector steers; give --vector too")
    from .steer import _steer_positions, _vector

    vec = _vector(vector, multiplier) if vector is not None else None
    if vec is not None:
        checks.layer_syntax(layers or "all")
        if _steer_positions(positions) == "generated":
            from ..errors import InputError

            raise InputError("--positions generated steers nothing in the lens's one forward over the prompt; use "
                             "auto, all or from_eoi")
    direction = _vector(ablate, 1.0, "--ablate") if ablate is not None else None
    mixing = _lens_mix(mix_source, mix_point, mix_scale, mix_position, positions, chat)
    from ..tuned_lens import parse_lens

    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    edits = []
    if vec is not None:
        from ..steering.apply import Steer

        vec.check_fits(m)
        edits.append(Steer(vec, multiplier, layers=layers, positions=positions))
    if direction is not None:
        from ..hooks.directions import ProjectOut

        direction.check_fits(m)
        edits.append(ProjectOut(direction[direction.layers[0]], source=direction.provenance()))
    if mixing is not None:
        edits.append(mixing)
    tuned = parse_lens(lens_spec, m)  # read once, for the lens and the grid
    res = run_lens(m, prompt, points=pts, position=position, top_k=top_k, target=target, chat=chat,
                   json_out=json_out, html_out=html_out, lens=tuned, edits=edits)
    if grid_out is not None:
        from ..hooks.points import parse_points
        from ..lens import lens_grid
        from ..runs import write_json

        first = pts[0].split(",")[0].strip()
        kind = parse_points(first, m.n_layers)[0].kind if first.startswith("blocks.") else first
        text = m.chat_prompt(prompt[0]) if chat else prompt[0]
        with m.edit(*edits):
            grid = lens_grid(m, text, kind, top_k=top_k, add_special_tokens=not chat, lens=tuned)
        write_json(grid_out, grid)
    for b, p in enumerate(res.prompts):
        title = (f"{res.lens} lens{' of the edited run' if edits else ''}: {p!r} at position {position} "
                 f"({res.position_tokens[b]!r}); model predicts {res.final_top_tokens[b]!r}")
        if res.target_token is not None:
            title += f"; target {res.target_token!r} (id {res.target_id})"
        caption = f"each cell: the {res.top_probs.shape[-1]} most likely next tokens at that point, with probabilities"
        if res.target_probs is not None:
            caption += "; p = the target's probability, r = its rank (1 = most likely)"
        table = Table(title=title, caption=caption, show_lines=False)
        table.add_column("layer", justify="right")
        for k in res.kinds:
            table.add_column(k)
        layers: list[int | None] = []
        for pt in res.points:
            if pt.layer not in layers:
                layers.append(pt.layer)
        for layer in layers:
            cells = []
            for k in res.kinds:
                j = next((j for j, pt in enumerate(res.points) if pt.layer == layer and pt.kind == k), None)
                if j is None:
                    cells.append("")
                    continue
                cell = ", ".join(f"{t!r} {float(res.top_probs[b, j, i]):.2f}"
                                 for i, t in enumerate(res.top_tokens[b][j]))
                if res.target_probs is not None and res.target_ranks is not None:
                    cell += f" | p={float(res.target_probs[b, j]):.3f} r={int(res.target_ranks[b, j])}"
                cells.append(cell)
            table.add_row("-" if layer is None else str(layer), *cells)
        console.print(table)
    for path in (json_out, html_out):
        if path:
            err_console.print(f"wrote {path}", highlight=False)


@app.command()
def demo(
    out: Annotated[Path | None, opt("--out", metavar="DIR", help="Report folder [default: runs/demo-<time>].")]
    = None,
    model: Annotated[str, opt("--model", metavar="MODEL", help="Model to run the demo on.")]
    = "HuggingFaceTB/SmolLM2-135M-Instruct",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Run the demo on a real model and write a report folder (JSON, PNG, offline HTML); about a minute on a CPU."""
    from ..demo import run_demo

    checks.output_dir(out, "--out folder")
    checks.device(device)
    path = run_demo(out, model_name=model, dtype=dtype, device=device, **placement(device_map, max_memory))
    wrote(path / "index.html")


def tuned_lens_cmd(
    model: ModelArg,
    data: Annotated[Path, opt("--data", metavar="PATH", help="Texts to train on (the last --held-out are kept "
                              "for the comparison).", show_default=False)],
    out: Annotated[Path, opt("--out", metavar="DIR", help="Run folder: lens/, tuned_lens.json, tuned_lens.png.",
                             show_default=False)],
    limit: Annotated[int, opt("--limit", metavar="N", help="Texts to read.")] = 500,
    held_out: Annotated[int, opt("--held-out", metavar="N", help="Texts kept out of training for the "
                                 "comparison.")] = 32,
    steps: Annotated[int, opt("--steps", metavar="N", help="Optimizer steps.")] = 250,
    lr: Annotated[float, opt("--lr", metavar="X", help="Learning rate (decayed linearly to 0).")] = 1e-3,
    optimizer: Annotated[str, opt("--optimizer", metavar="NAME", help="adam (AdamW), or sgd (the paper's "
                                  "Nesterov SGD; it wants --lr 1.0 and very large batches).")] = "adam",
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Texts per step.")] = 8,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Tokens per text.")] = 128,
    seed: Annotated[int, opt("--seed", metavar="N", help="Seed.")] = 0,
    checkpoint_every: Annotated[int, opt("--checkpoint-every", metavar="N", help="Steps between checkpoints (a "
                                         "re-run in --out continues from the latest).")] = 25,
    overwrite: Annotated[bool, opt("--overwrite", help="Start again instead of continuing a run in --out.")]
    = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Train a tuned lens (one affine translator per layer) and compare it with the logit lens on held-out text."""
    from ..data.texts import read_texts
    from ..jobs.lenses import tuned_lens
    from ..progress import task

    checks.input_path(data, "--data")
    checks.output_dir(out, "--out folder")
    for value, flag in ((limit, "--limit"), (held_out, "--held-out"), (steps, "--steps"),
                        (batch_size, "--batch-size"), (max_length, "--max-length"),
                        (checkpoint_every, "--checkpoint-every")):
        checks.positive(value, flag)
    checks.positive(lr, "--lr")
    checks.choice(optimizer, "--optimizer", ("adam", "sgd"))
    checks.seed(seed)
    texts = read_texts(data, limit=limit)
    if held_out >= len(texts):
        from ..errors import InputError

        raise InputError(f"--held-out {held_out} leaves nothing to train on: {data} gave {len(texts)} texts "
                         f"(--limit {limit}); hold out fewer or read more")
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    with task("training the tuned lens", total=steps, unit="steps") as bar:
        res = tuned_lens(m, texts, out, held_out=held_out, steps=steps, lr=lr, optimizer=optimizer,
                         batch_size=batch_size, max_length=max_length, seed=seed,
                         checkpoint_every=checkpoint_every, overwrite=overwrite,
                         progress=lambda step, kl: bar.advance(1, kl=round(kl, 4)))
    n = len(res["layers"])
    console.print(f"mean KL to the output over {n} layers (held-out): logit lens "
                  f"{sum(res['kl']['logit']) / n:.3g}, tuned lens {sum(res['kl']['tuned']) / n:.3g}", highlight=False)
    wrote(out / "lens", out / "tuned_lens.json", out / "tuned_lens.png")


def _register() -> None:
    """Command groups and commands after the foundation ones, in workflow order."""
    from . import analysis, diff, eval, lfp, sae, serve, steer

    app.add_typer(steer.app, name="steer")
    app.command("layers")(analysis.layers_cmd)
    app.add_typer(analysis.compare_app, name="compare")
    app.command("project-vocab")(analysis.project_vocab)
    app.command("diverge")(analysis.diverge)
    app.command("tuned-lens")(tuned_lens_cmd)
    app.command("patch")(analysis.patch_cmd)
    app.add_typer(sae.acts_app, name="acts")
    app.add_typer(sae.sae_app, name="sae")
    app.add_typer(lfp.finetune_app, name="finetune")
    app.add_typer(lfp.lfp_app, name="lfp")
    app.add_typer(eval.eval_app, name="eval")
    app.add_typer(diff.diff_app, name="diff")
    app.command("report")(report)
    app.command("serve")(serve.serve_cmd)


def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by actlab.", metavar="RUN_DIR",
                                            show_default=False)],
    out: Annotated[Path | None, opt("--out", metavar="FILE", help="Output HTML [default: RUN_DIR/report.html]."
                                    )] = None,
) -> None:
    """Build one self-contained offline HTML page for everything a run directory holds."""
    from ..report.run_report import build_report

    checks.input_dir(run_dir, "run directory")
    checks.output_file(out, "--out file")
    wrote(build_report(run_dir, out))


_register()
