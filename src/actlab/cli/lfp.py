"""``actlab finetune rl|dpo`` and ``actlab lfp run|<stage>|preset``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DeviceOpt, DtypeOpt, ModelArg, console, err_console, load

finetune_app = typer.Typer(help="Fine-tune with feedback (TRL): lexicon-reward RL or DPO.", no_args_is_help=True)
lfp_app = typer.Typer(help="The Learned-Feedback-Patterns pipeline (resumable run directory).", no_args_is_help=True)


@finetune_app.command("rl")
def finetune_rl(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="IMDb CSV (review prefixes are the prompts).")],
    out: Annotated[Path, typer.Option(help="Output folder (model/, finetune.json, finetune.png).")],
    preset: Annotated[str, typer.Option(help="study (batch 64, KL 0.5, lr 1e-6, clip 1) or tiny.")] = "study",
    method: Annotated[str | None, typer.Option(help="grpo or rloo.")] = None,
    steps: Annotated[int | None, typer.Option(help="Override max steps.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the learning rate.")] = None,
    beta: Annotated[float | None, typer.Option(help="Override the KL coefficient.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """RL with the VADER-lexicon reward and a KL penalty (GRPO/RLOO; see docs/lfp.md for the PPO deviation)."""
    from ..errors import InputError
    from ..finetune import RL_PRESETS
    from ..jobs import finetune_rl

    if preset not in RL_PRESETS:
        raise InputError(f"unknown preset {preset!r}; valid: {', '.join(RL_PRESETS)}")
    cfg = RL_PRESETS[preset].model_copy(update={k: v for k, v in {"method": method, "max_steps": steps, "lr": lr,
                                                                  "beta": beta}.items() if v is not None})
    m = load(model, dtype, device)
    res = finetune_rl(m, data, out, cfg)
    h = res["history"]
    if h:
        console.print(f"reward {h[0].get('reward', float('nan')):.3f} -> {h[-1].get('reward', float('nan')):.3f}, "
                      f"KL {h[-1].get('kl', float('nan')):.4f} after {h[-1]['step']} steps")
    console.print(f"wrote {out}/model (HF format), finetune.json, finetune.png")


@finetune_app.command("dpo")
def finetune_dpo(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="HH-RLHF JSONL(.gz) or prompt/chosen/rejected JSONL.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    swap: Annotated[bool, typer.Option(help="Swap preferred and dispreferred answers.")] = False,
    steps: Annotated[int, typer.Option(help="Max steps.")] = 200,
    batch_size: Annotated[int, typer.Option(help="Pairs per step.")] = 8,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 5e-7,
    beta: Annotated[float, typer.Option(help="DPO beta.")] = 0.1,
    max_length: Annotated[int, typer.Option(help="Max tokens per example.")] = 512,
    limit: Annotated[int | None, typer.Option(help="Use at most this many pairs.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """DPO on preference pairs; reports preference accuracy and a KL estimate over steps."""
    from ..finetune import DPOSettings
    from ..jobs import finetune_dpo

    m = load(model, dtype, device)
    res = finetune_dpo(m, data, out, DPOSettings(max_steps=steps, batch_size=batch_size, lr=lr, beta=beta,
                                                 max_length=max_length), swap=swap, limit=limit)
    h = res["history"]
    if h:
        console.print(f"preference accuracy {h[-1].get('preference_accuracy', float('nan')):.3f}, KL estimate "
                      f"{h[-1].get('kl_estimate', float('nan')):.4f} after {h[-1]['step']} steps")
    console.print(f"wrote {out}/model (HF format), finetune.json, finetune.png")


ConfigArg = Annotated[Path, typer.Argument(help="LFP config (YAML).")]


@lfp_app.command("run")
def lfp_run(config: ConfigArg,
            force: Annotated[bool, typer.Option(help="Re-run stages that finished before.")] = False) -> None:
    """Run every stage, skipping those already finished in the run directory."""
    from ..lfp import load_config, run_pipeline

    cfg = load_config(config)
    run_pipeline(cfg, force=force, log=lambda s: err_console.print(s, highlight=False))
    console.print(f"done: {cfg.run_dir}/report.html")


@lfp_app.command("preset")
def lfp_preset(
    name: Annotated[str, typer.Argument(help="tiny or paper.")],
    run_dir: Annotated[str, typer.Option(help="Run folder to write into the config.")] = "runs/lfp",
    data: Annotated[str | None, typer.Option(help="Text dataset (IMDb CSV).")] = None,
    base_model: Annotated[str | None, typer.Option(help="Base model.")] = None,
) -> None:
    """Print a starting config for a preset (redirect it to a file and edit)."""
    from ..lfp.config import preset_yaml

    fields = {"run_dir": run_dir}
    if base_model:
        fields["base_model"] = base_model
    if data:
        fields["data"] = data
    console.print(preset_yaml(name, **fields), end="", highlight=False, markup=False)


def _stage_command(stage: str):
    def cmd(config: ConfigArg) -> None:
        from ..lfp import load_config, run_stage

        run_stage(load_config(config), stage, log=lambda s: err_console.print(s, highlight=False))

    cmd.__doc__ = f"Run only the '{stage}' stage."
    return cmd


def _register() -> None:
    from ..lfp.stages import STAGES

    for stage in STAGES:
        lfp_app.command(stage)(_stage_command(stage))


_register()
