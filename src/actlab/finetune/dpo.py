"""DPO on preference pairs through TRL.

Data: HH-RLHF rows (``chosen``/``rejected`` full dialogues, JSONL or .jsonl.gz; the prompt is their shared
text up to the last ``"\\n\\nAssistant:"``) or explicit ``prompt``/``chosen``/``rejected`` JSONL (e.g.
toxic-dpo). ``swap=True`` exchanges preferred and dispreferred answers (e.g. to train *towards* the
rejected behaviour, as the study does for its dialogue tasks).

Training reports preference accuracy and, as a KL estimate, the mean log-ratio between policy and
reference on the training answers (TRL logs ``rewards/chosen`` = beta * log-ratio).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from ..errors import InputError
from ..runs import write_json
from .rl import _plot_history, _trl_common, history_from_trainer, quiet

if TYPE_CHECKING:
    from ..models.model import Model

ASSISTANT = "\n\nAssistant:"


class DPOSettings(BaseModel):
    beta: float = Field(0.1, gt=0)
    lr: float = Field(5e-7, gt=0)
    batch_size: int = Field(8, gt=0)
    max_steps: int = Field(200, gt=0)
    max_length: int = Field(512, gt=0)
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 1


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """HH-RLHF: (prompt, chosen answer, rejected answer), split at the last shared assistant turn."""
    k = chosen.rfind(ASSISTANT)
    if k < 0 or rejected[: k + len(ASSISTANT)] != chosen[: k + len(ASSISTANT)]:
        return None
    cut = k + len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def load_preferences(path: str | os.PathLike[str], *, swap: bool = False, limit: int | None = None
                     ) -> list[dict[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"preference file {str(p)!r} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    rows: list[dict[str, str]] = []
    skipped = 0
    with opener(p, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if "prompt" in obj:
                missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(obj.get(k), str)]
                if missing:
                    raise InputError(f"{p}:{n}: missing or non-string {', '.join(missing)}")
                row = {"prompt": obj["prompt"], "chosen": obj["chosen"], "rejected": obj["rejected"]}
            elif "chosen" in obj and "rejected" in obj:
                parts = split_dialogue(obj["chosen"], obj["rejected"])
                if parts is None:
                    skipped += 1
                    continue
                row = dict(zip(("prompt", "chosen", "rejected"), parts, strict=True))
            else:
                raise InputError(f"{p}:{n}: expected prompt/chosen/rejected or HH-RLHF chosen/rejected fields")
            if swap:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    if not rows:
        raise InputError(f"{p}: no usable preference pairs ({skipped} dialogues did not share a prompt)")
    return rows


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
    trainer = DPOTrainer(model=model.hf, args=args, train_dataset=ds, processing_class=model.tokenizer)
    quiet(trainer)
    trainer.train()
    model.hf.eval()
    hist = history_from_trainer(trainer.state.log_history, ("rewards/accuracies", "rewards/chosen",
                                                            "rewards/rejected", "rewards/margins", "loss"))
    for h in hist:
        if "rewards/chosen" in h and "rewards/rejected" in h:
            h["kl_estimate"] = (h["rewards/chosen"] + h["rewards/rejected"]) / (2 * cfg.beta)
        if "rewards/accuracies" in h:
            h["preference_accuracy"] = h["rewards/accuracies"]
    model.save(out / "model")
    summary = {"method": "dpo", "config": cfg.model_dump(), "swapped": swapped, "n_pairs": len(pairs),
               "history": hist, "model_dir": str(out / "model"),
               "kl_note": "kl_estimate = mean policy/reference log-ratio on the training answers"}
    write_json(out / "finetune.json", summary)
    _plot_history(hist, out / "finetune.png", ("preference_accuracy", "kl_estimate"))
    return summary
