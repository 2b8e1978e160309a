"""RL fine-tuning with the lexicon reward and a KL penalty to the base model, through TRL.

The study used PPO with a value head; PPO left TRL's main package in 1.x and needs a reward *model*. actlab
uses TRL's GRPO (default) or RLOO, which take plain reward functions and penalise KL to the reference
model with ``beta``. The deviation: a group-relative baseline (several completions per prompt) instead of a
learned value function. The ``study`` preset keeps the study's batch size (64), KL coefficient (0.5),
learning rate (1e-6) and gradient clipping (1.0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from ..configs import SEED_MAX, StrictConfig
from ..errors import InputError
from ..progress import task as progress_task
from ..progress import third_party_quiet
from ..runs import write_json
from .rewards import lexicon_reward_fn

if TYPE_CHECKING:
    from ..models.model import Model


class RLConfig(StrictConfig):
    method: Literal["grpo", "rloo"] = "grpo"
    batch_size: int = Field(64, gt=0)
    num_generations: int = Field(8, gt=1)
    beta: float = Field(0.5, ge=0)
    lr: float = Field(1e-6, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_steps: int = Field(200, gt=0)
    max_completion_length: int = Field(48, gt=0)
    prompt_words: int = Field(8, gt=0)
    n_prompts: int = Field(1024, gt=0)
    temperature: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    logging_steps: int = Field(1, gt=0)
    reward: Literal["lexicon", "classifier"] = "lexicon"  # the study's lexicon, or its Appendix B classifier
    classifier: str | None = None  # reward: classifier - an HF sequence-classification model (hub id or folder)
    classifier_label: str = "positive"  # the label whose logit is the reward (a name or an index)
    classifier_text: Literal["completion", "prompt+completion"] = "completion"

    @model_validator(mode="after")
    def _reward_needs(self) -> RLConfig:
        if self.reward == "classifier" and not self.classifier:
            raise ValueError("reward 'classifier' needs classifier (e.g. a DistilBERT IMDb sentiment model)")
        return self


RL_PRESETS: dict[str, RLConfig] = {
    "study": RLConfig(),
    "tiny": RLConfig(batch_size=16, num_generations=4, beta=0.5, lr=5e-5, max_steps=20, max_completion_length=24,
                     n_prompts=128),
}


def _trl_common(cfg: Any, out: Path) -> dict[str, Any]:
    import torch

    return dict(output_dir=str(out / "trl"), learning_rate=cfg.lr, max_grad_norm=cfg.max_grad_norm,
                max_steps=cfg.max_steps, logging_steps=cfg.logging_steps, report_to=[], save_strategy="no",
                seed=cfg.seed, use_cpu=not torch.cuda.is_available(), bf16=False, disable_tqdm=True)


def quiet(trainer: Any) -> None:
    """Drop transformers' PrinterCallback (it prints every log dict when progress bars are off); the history
    is written to finetune.json instead."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def train_with_progress(trainer: Any, description: str, total: int, keys: tuple[str, ...]) -> None:
    """``trainer.train()`` reported through actlab's progress (a bar on a terminal, a dated line in a log file
    every few seconds, with the latest of ``keys``), with the libraries' own bars and warnings quiet."""
    from transformers import TrainerCallback

    with progress_task(description, total=total, unit="steps") as task, third_party_quiet():
        class StepProgress(TrainerCallback):
            seen = 0

            def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                       **kwargs: Any) -> None:
                shown = {k.replace("rewards/", ""): round(float(v), 4) for k, v in (logs or {}).items()
                         if k in keys and isinstance(v, (int, float))}
                task.advance(max(state.global_step - self.seen, 0), **shown)
                self.seen = max(self.seen, state.global_step)

        trainer.add_callback(StepProgress())
        trainer.train()


def history_from_trainer(log_history: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"step": h["step"], **{k: float(h[k]) for k in keys if k in h}} for h in log_history
            if any(k in h for k in keys)]


def reward_function(cfg: RLConfig) -> Any:
    """The reward TRL calls: the lexicon's, or a classifier's logit (:class:`ClassifierReward`)."""
    if cfg.reward == "classifier":
        import torch

        from .rewards import ClassifierReward

        return ClassifierReward(str(cfg.classifier), cfg.classifier_label, text=cfg.classifier_text,
                                device="cuda" if torch.cuda.is_available() else None)
    return lexicon_reward_fn


def describe_reward(cfg: RLConfig) -> str:
    if cfg.reward == "classifier":
        return (f"the logit of {cfg.classifier_label!r} from the classifier {cfg.classifier} on the "
                f"{cfg.classifier_text} (the study's Appendix B)")
    return "the VADER-lexicon reward on the completion (sum of valences / 5, clipped to [-10, 10])"


def train_rl(model: Model, prompts: list[str], cfg: RLConfig, out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Fine-tune ``model`` in place with GRPO/RLOO and the lexicon (or classifier) reward; save it under
    ``out_dir/model``."""
    from datasets import Dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_dict({"prompt": prompts[: cfg.n_prompts]})
    common = _trl_common(cfg, out)
    if cfg.method == "grpo":
        from trl import GRPOConfig as ConfigCls
        from trl import GRPOTrainer as TrainerCls
    elif cfg.method == "rloo":
        from trl import RLOOConfig as ConfigCls  # type: ignore[assignment]
        from trl import RLOOTrainer as TrainerCls  # type: ignore[assignment]
    else:
        raise InputError(f"unknown RL method {cfg.method!r}; valid: grpo, rloo")
    args = ConfigCls(per_device_train_batch_size=cfg.batch_size, num_generations=cfg.num_generations,
                     beta=cfg.beta, max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                     **common)
    with third_party_quiet():  # datasets' map bars, the reference model's "Loading weights", TRL's warnings
        trainer = TrainerCls(model=model.hf, reward_funcs=reward_function(cfg), args=args, train_dataset=ds,
                             processing_class=model.tokenizer)
    quiet(trainer)
    keys = ("reward", "reward_std", "kl", "loss")
    train_with_progress(trainer, f"{cfg.method} fine-tuning", cfg.max_steps, keys)
    model.hf.eval()
    hist = history_from_trainer(trainer.state.log_history, keys)
    model.save(out / "model")
    summary = {"method": cfg.method, "config": cfg.model_dump(), "history": hist, "reward": describe_reward(cfg),
               "deviation": "GRPO/RLOO with a KL penalty (beta) instead of the study's PPO with a value head",
               "model_dir": str(out / "model")}
    write_json(out / "finetune.json", summary)
    return summary


def load_history(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "finetune.json").read_text())
