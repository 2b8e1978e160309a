"""``actlab finetune rl|dpo`` and ``actlab lfp run|<stage>|preset``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import DeviceMapOpt, DeviceOpt, DtypeOpt, MaxMemOpt, ModelArg, checks, console, load, opt, raw, wrote

finetune_app = typer.Typer(help="Fine-tune with feedback (TRL): lexicon-reward RL or DPO.", no_args_is_help=True,
                           rich_markup_mode=None)
lfp_app = typer.Typer(help="The Learned-Feedback-Patterns pipeline (resumable run directory).", no_args_is_help=True,
                      rich_markup_mode=None)
OutDir = Annotated[Path, opt("--out", metavar="DIR", help="Run folder (model/, finetune.json, finetune.png, "
                                                          "run.json).")]


@finetune_app.command("rl")
def finetune_rl(
    model: ModelArg,
    data: Annotated[Path, opt("--data", metavar="PATH", help="IMDb CSV (review prefixes are the prompts).")],
    out: OutDir,
    preset: Annotated[str, opt("--preset", metavar="NAME", help="tiny (minutes on a CPU) or study (batch 64, KL "
                                                                 "0.5, lr 1e-6, clip 1; a GPU).")] = "study",
    method: Annotated[str | None, opt("--method", metavar="METHOD", help="grpo or rloo [default: grpo].")] = None,
    steps: Annotated[int | None, opt("--steps", metavar="N", help="Override the preset's steps.")] = None,
    lr: Annotated[float | None, opt("--lr", metavar="X", help="Override the learning rate.")] = None,
    beta: Annotated[float | None, opt("--beta", metavar="X", help="Override the KL coefficient.")] = None,
    reward: Annotated[str, opt("--reward", metavar="KIND", help="lexicon (the study's VADER reward) or "
                               "classifier (a sequence classifier's logit; the study's Appendix B).")] = "lexicon",
    classifier: Annotated[str | None, opt("--classifier", metavar="MODEL", help="With --reward classifier: an HF "
                                          "sequence-classification model (hub id or folder), e.g. a DistilBERT "
                                          "IMDb sentiment model.")] = None,
    classifier_label: Annotated[str, opt("--classifier-label", metavar="LABEL", help="With --reward classifier: "
                                         "the label whose logit is the reward (a name or an index).")] = "positive",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """RL with the VADER-lexicon (or a classifier's) reward and a KL penalty (GRPO/RLOO; see docs/lfp.md for the
    PPO deviation)."""
    from ..configs import build_config
    from ..finetune import RL_PRESETS
    from ..finetune.rl import RLConfig
    from ..jobs import finetune_rl

    checks.choice(preset, "--preset", list(RL_PRESETS))
    checks.input_file(data, "--data file")
    checks.output_dir(out, "--out folder")
    checks.choice(reward, "--reward", ("lexicon", "classifier"))
    if classifier is not None and reward != "classifier":
        from ..errors import InputError

        raise InputError("--classifier is the model behind --reward classifier; give --reward classifier too")
    overrides = {k: v for k, v in {"method": method, "max_steps": steps, "lr": lr, "beta": beta, "reward": reward,
                                   "classifier": classifier, "classifier_label": classifier_label}.items()
                 if v is not None}
    cfg = build_config(RLConfig, {**RL_PRESETS[preset].model_dump(), **overrides}, "RL")  # validated
    if cfg.reward == "classifier":
        from ..finetune.rewards import check_classifier

        check_classifier(str(cfg.classifier), cfg.classifier_label)  # before the policy model loads
    from ..data import imdb_prefixes
    from ..jobs.common import FromFile

    prompts = FromFile(imdb_prefixes(data, cfg.n_prompts, cfg.prompt_words), data)  # read before the model loads
    m = load(model, dtype, device, device_map=device_map, max_memory=max_memory)
    res = finetune_rl(m, prompts, out, cfg)
    h = res["history"]
    if h:
        console.print(f"reward {h[0].get('reward', float('nan')):.3f} -> {h[-1].get('reward', float('nan')):.3f}, "
                      f"KL {h[-1].get('kl', float('nan')):.4f} after {h[-1]['step']} steps", highlight=False)
    wrote(f"{out}/model (HF format, the checkpoint's dtype)", "finetune.json", "finetune.png")


@finetune_app.command("dpo")
def finetune_dpo(
    model: ModelArg,
    data: Annotated[Path, opt("--data", metavar="PATH", help="HH-RLHF JSONL(.gz) or prompt/chosen/rejected "
                                                              "JSONL.")],
    out: OutDir,
    swap: Annotated[bool, opt("--swap", help="Swap preferred and dispreferred answers.")] = False,
    steps: Annotated[int, opt("--steps", metavar="N", help="Max steps.")] = 200,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Pairs per step.")] = 8,
    lr: Annotated[float, opt("--lr", metavar="X", help="Learning rate.")] = 5e-7,
    beta: Annotated[float, opt("--beta", metavar="X", help="DPO beta.")] = 0.1,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Max tokens per example.")] = 512,
    limit: Annotated[int | None, opt("--limit", metavar="N", help="Use at most this many pairs.")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """DPO on preference pairs; reports preference accuracy and the policy/reference log-ratio of the training
    answers over steps."""
    from ..configs import build_config
    from ..finetune import DPOSettings
    from ..jobs import finetune_dpo

    checks.input_file(data, "--data file")
    checks.output_dir(out, "--out folder")
    checks.positive(limit, "--limit")
    cfg = build_config(DPOSettings, {"max_steps": steps, "batch_size": batch_size, "lr": lr, "beta": beta,
                                     "max_length": max_length}, "DPO")
    from ..data import load_preferences
    from ..jobs.common import FromFile

    pairs = FromFile(load_preferences(data, swap=swap, limit=limit), data)  # read before the model loads
    m = load(model, dtype, device, device_map=device_map, max_memory=max_memory)
    res = finetune_dpo(m, pairs, out, cfg, swap=swap, limit=limit)
    h = res["history"]
    if h:
        last = h[-1]
        console.print(f"preference accuracy {last.get('preference_accuracy', float('nan')):.3f} after {last['step']} "
                      f"steps; log p(policy)/p(reference) of the training answers: chosen "
                      f"{last.get('log_ratio_chosen', float('nan')):+.3f}, rejected "
                      f"{last.get('log_ratio_rejected', float('nan')):+.3f} (DPO widens their gap; not a KL, so "
                      "negative values are possible)", highlight=False)
    wrote(f"{out}/model (HF format, the checkpoint's dtype)", "finetune.json", "finetune.png")


ConfigArg = Annotated[Path, typer.Argument(help="LFP config (YAML).", metavar="CONFIG", show_default=False)]


def _config(path: Path):
    from ..lfp import load_config

    checks.input_file(path, "config file")
    return load_config(path)


@lfp_app.command("run")
def lfp_run(config: ConfigArg,
            force: Annotated[bool, opt("--force", help="Re-run stages that finished before.")] = False) -> None:
    """Run every stage, skipping those already finished in the run directory."""
    from ..lfp import run_pipeline

    cfg = _config(config)
    run_pipeline(cfg, force=force)
    wrote(f"{cfg.run_dir}/report.html")


@lfp_app.command("preset")
def lfp_preset(
    name: Annotated[str, typer.Argument(help="tiny (a CPU, under a minute) or paper (the study's settings: "
                                             "a GPU for its models; ~5 min on a CPU with tinystories-656k).",
                                        metavar="NAME", show_default=False)],
    run_dir: Annotated[str, opt("--run-dir", metavar="DIR", help="Run folder to write into the config.")]
    = "runs/lfp",
    data: Annotated[str | None, opt("--data", metavar="PATH", help="Text dataset (IMDb CSV).")] = None,
    base_model: Annotated[str | None, opt("--base-model", metavar="MODEL", help="Base model.")] = None,
) -> None:
    """Print a starting config for a preset (redirect it to a file and edit); written raw, never wrapped, with
    --run-dir and --data made absolute."""
    from ..lfp.config import preset_yaml

    # paths typed here are relative to the shell's folder, while a config's relative paths are read against the
    # config file's folder: write them absolute so `preset ... > runs/lfp.yaml` then `lfp run runs/lfp.yaml` agree
    fields = {"run_dir": str(Path(run_dir).expanduser().resolve())}
    if base_model:
        fields["base_model"] = base_model
    if data:
        fields["data"] = str(Path(data).expanduser().resolve())
    raw(preset_yaml(name, **fields))


def _stage_command(stage: str):
    def cmd(config: ConfigArg) -> None:
        from ..lfp import run_stage

        run_stage(_config(config), stage)

    cmd.__doc__ = f"Run only the '{stage}' stage."
    return cmd


def _register() -> None:
    from ..lfp.stages import STAGES

    for stage in STAGES:
        lfp_app.command(stage)(_stage_command(stage))


_register()
