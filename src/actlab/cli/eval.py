"""``actlab eval run|preset``: compare steering methods on held-out behaviour evaluations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import checks, console, distributed, load, opt, raw, wrote

eval_app = typer.Typer(help="Does an intervention work? Steering methods compared on the same held-out evaluation "
                            "(A/B behaviour, steerability, open-ended judge scores, side effects).",
                       no_args_is_help=True, rich_markup_mode=None)


@eval_app.command("run")
def eval_run(
    config: Annotated[Path, typer.Argument(help="Evaluation config (YAML; actlab eval preset NAME prints one).",
                                           metavar="CONFIG", show_default=False)],
    overwrite: Annotated[bool, opt("--overwrite", help="Start again in a folder written with other settings.")]
    = False,
) -> None:
    """Run every method on every behaviour; resumes a folder it finished part of (kill -9 anywhere is safe)."""
    from ..eval import load_config, prepare, run_eval

    checks.input_file(config, "config file")
    cfg = load_config(config)
    checks.output_dir(cfg.out, "out folder")
    prepare(cfg)  # every input read and checked before the model loads
    rank, _ = distributed(cfg.device)
    m = load(cfg.model, cfg.dtype, cfg.device)
    board = run_eval(cfg, model=m, overwrite=overwrite)
    if rank != 0:
        return
    for r in board["rows"]:
        eff = r.get("test_effect", r.get("open_effect"))
        console.print(f"{r['behaviour']:<24} {r['method']:<18} layer {r.get('layer')!s:>4} strength "
                      f"{r.get('strength')!s:>6}  test effect {'' if eff is None else f'{eff:+.3f}'}",
                      highlight=False)
    for w in board["warnings"]:
        console.print(f"warning: {w}", highlight=False)
    wrote(cfg.out / "index.html", "leaderboard.csv", "leaderboard.json", "results.jsonl")


@eval_app.command("preset")
def eval_preset(
    name: Annotated[str, typer.Argument(help="tiny (stories260k, about a minute on 2 CPU cores, no judge) or caa "
                                             "(the CAA paper's seven behaviours on SmolLM2-135M-Instruct).",
                                        metavar="NAME", show_default=False)],
    out: Annotated[str, opt("--out", metavar="DIR", help="Run folder to write into the config.")] = "runs/eval",
    data_dir: Annotated[str | None, opt("--data-dir", metavar="DIR", help="Folder of the built-in datasets "
                                        "(caa/, imdb/, refusal_direction/) [default: ACTLAB_DATA_DIR].")] = None,
    model: Annotated[str | None, opt("--model", metavar="MODEL", help="Model to evaluate instead of the "
                                     "preset's.")] = None,
) -> None:
    """Print a starting config (redirect it to a file and edit); paths are written absolute."""
    from ..eval import preset_yaml

    fields = {"out": str(Path(out).expanduser().resolve())}
    if data_dir:
        fields["data_dir"] = str(Path(data_dir).expanduser().resolve())
    if model:
        fields["model"] = model
    raw(preset_yaml(name, **fields))
