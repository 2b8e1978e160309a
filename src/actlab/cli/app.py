"""The Typer application and the foundation commands: ``info``, ``lens``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, GgufOpt, ModelArg, console, err_console, load, split_list

app = typer.Typer(
    name="actlab",
    help="Activation-engineering workbench for Hugging Face causal LMs: read, steer, compare, decompose.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_subcommands() -> None:
    from . import analysis, lfp, sae, steer

    app.add_typer(steer.app, name="steer")
    app.add_typer(analysis.compare_app, name="compare")
    app.command("layers")(analysis.layers_cmd)
    app.command("project-vocab")(analysis.project_vocab)
    app.command("diverge")(analysis.diverge)
    app.command("report")(analysis.report)
    app.add_typer(sae.acts_app, name="acts")
    app.add_typer(sae.sae_app, name="sae")
    app.add_typer(lfp.finetune_app, name="finetune")
    app.add_typer(lfp.lfp_app, name="lfp")


_register_subcommands()


@app.command()
def info(model: ModelArg, dtype: DtypeOpt = None, device: DeviceOpt = None, gguf_file: GgufOpt = None) -> None:
    """Print a model's architecture, layer count, widths and hook points."""
    m = load(model, dtype, device, gguf_file)
    t = Table(show_header=False, box=None)
    for k, v in [("model", m.name), ("architecture", type(m.hf).__name__), ("family", m.adapter.family),
                 ("layers", m.n_layers), ("d_model", m.d_model), ("d_mlp", m.d_mlp), ("vocab", m.vocab_size),
                 ("context", m.context_length), ("parallel residual", m.parallel), ("dtype", str(m.dtype)),
                 ("device", str(m.device))]:
        t.add_row(f"[bold]{k}[/bold]", str(v))
    console.print(t)
    from ..hooks.points import BLOCK_KINDS, GLOBAL_POINTS

    console.print(f"[bold]hook points[/bold]: {', '.join(GLOBAL_POINTS)}, and for each layer i in "
                  f"0..{m.n_layers - 1}: " + ", ".join(f"blocks.{{i}}.{k}" for k in BLOCK_KINDS))
    console.print(f"({len(m.hook_points)} in all)")


@app.command()
def lens(
    model: ModelArg,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="Prompt text (repeat for a batch).")],
    points: Annotated[list[str] | None, typer.Option("--points", help="Hook points or kinds, comma-separated "
                                                     "(default: resid_post,attn_out,mlp_out).")] = None,
    position: Annotated[int, typer.Option(help="Token position over real tokens (-1 = last).")] = -1,
    top_k: Annotated[int, typer.Option("--top-k", help="Tokens per layer.")] = 5,
    target: Annotated[str | None, typer.Option(help="Target token (one token, e.g. ' Paris') or id.")] = None,
    chat: Annotated[bool, typer.Option(help="Wrap each prompt in the chat template.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result as JSON.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write an offline HTML page.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Logit lens: decode hook points through the final norm and unembedding, layer by layer."""
    from ..jobs.lens import DEFAULT_POINTS
    from ..jobs.lens import lens as run_lens

    m = load(model, dtype, device, gguf_file)
    res = run_lens(m, prompt, points=split_list(points) or DEFAULT_POINTS, position=position, top_k=top_k,
                   target=target, chat=chat, json_out=json_out, html_out=html_out)
    for b, p in enumerate(res.prompts):
        title = f"{p!r} at position {position} ({res.position_tokens[b]!r}); model predicts {res.final_top_tokens[b]!r}"
        if res.target_token is not None:
            title += f"; target {res.target_token!r} (id {res.target_id})"
        table = Table(title=title, show_lines=False)
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
                cell = f"{res.top_tokens[b][j][0]!r} {float(res.top_probs[b, j, 0]):.2f}"
                if res.target_probs is not None and res.target_ranks is not None:
                    cell += f" | p={float(res.target_probs[b, j]):.3f} r={int(res.target_ranks[b, j])}"
                cells.append(cell)
            table.add_row("-" if layer is None else str(layer), *cells)
        console.print(table)
    for path in (json_out, html_out):
        if path:
            err_console.print(f"wrote {path}")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Report folder (default: runs/demo-<time>).")] = None,
    model: Annotated[str, typer.Option(help="Model to run the demo on.")] = "HuggingFaceTB/SmolLM2-135M-Instruct",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Run the demo on a real model and write a report folder (JSON, PNG, offline HTML)."""
    from ..demo import run_demo

    run_demo(out, model_name=model, dtype=dtype, device=device, log=lambda s: err_console.print(s))
