"""DPO on preference pairs through TRL.

Data: :func:`actlab.data.load_preferences` (HH-RLHF dialogues or prompt/chosen/rejected JSONL; ``swap=True``
trains *towards* the rejected behaviour, as the study does for its dialogue tasks).

Training reports preference accuracy and the mean log-ratio between policy and reference on the training
answers, chosen and rejected apart (TRL logs ``rewards/chosen`` = beta * log-ratio). It is not a KL (that would
be measured on the policy's own samples): DPO can lower both answers' probabilities, so it can be negative.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ..configs import SEED_MAX, StrictConfig
from ..progress import third_party_quiet
from ..runs import write_json
from .rl import _trl_common, history_from_trainer, quiet, train_with_progress

if TYPE_CHECKING:
    from ..models.model import Model

class DPOSettings(StrictConfig):
    beta: float = Field(0.1, gt=0)
    lr: float = Field(5e-7, gt=0)
    batch_size: int = Field(8, gt=0)
    max_steps: int = Field(200, gt=0)
    max_length: int = Field(512, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    logging_steps: int = Field(1, gt=0)


def train_dpo(model: Model, pairs: list[dict[str, str]], cfg: DPOSettings, out_dir: str | os.PathLike[str],
              *, swapped: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` in place with DPO; save it under ``out_dir/model``."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_list(pairs)
    args = DPOConfig(per_device_train_batch_size=cfg.batch_size, beta=cfg.beta, max_length=cfg.max_length,
                     **_trl_common(cfg, out))
    with third_party_quiet():  # datasets' map bars, the reference model's "Loading weights", TRL's warnings
        trainer = DPOTrainer(model=model.hf, args=args, train_dataset=ds, processing_class=model.tokenizer)
    quiet(trainer)
    keys = ("rewards/accuracies", "rewards/chosen", "rewards/rejected", "rewards/margins", "loss")
    train_with_progress(trainer, "dpo fine-tuning", cfg.max_steps, keys)
    model.hf.eval()
    hist = history_from_trainer(trainer.state.log_history, keys)
    for h in hist:
        if "rewards/chosen" in h and "rewards/rejected" in h:
            h["log_ratio_chosen"] = h["rewards/chosen"] / cfg.beta
            h["log_ratio_rejected"] = h["rewards/rejected"] / cfg.beta
            h["mean_log_ratio"] = (h["log_ratio_chosen"] + h["log_ratio_rejected"]) / 2
        if "rewards/accuracies" in h:
            h["preference_accuracy"] = h["rewards/accuracies"]
    model.save(out / "model")
    summary = {"method": "dpo", "config": cfg.model_dump(), "swapped": swapped, "n_pairs": len(pairs),
               "history": hist, "model_dir": str(out / "model"),
               "log_ratio_note": "log_ratio_* = mean log p_policy/p_reference of the training answers (TRL's "
                                 "rewards / beta); not a KL: on the dataset's answers it can be negative"}
    write_json(out / "finetune.json", summary)
    return summary
