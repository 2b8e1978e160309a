"""Fine-tuning jobs: RL with the lexicon reward, DPO on preference pairs; each in a run folder with the
fine-tuned model, ``finetune.json`` and ``finetune.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data import imdb_prefixes, load_preferences
from ..finetune import DPOSettings, RLConfig, train_dpo, train_rl
from ..report.figures import training_history
from ..runs import Run
from .common import ModelLike, as_model, name_of


def finetune_rl(model: ModelLike, data: str | os.PathLike[str], out: str | os.PathLike[str], cfg: RLConfig
                ) -> dict[str, Any]:
    """GRPO/RLOO with the VADER-lexicon reward and a KL penalty on IMDb review prefixes."""
    m = as_model(model)
    with Run(out, "finetune rl", {"model": name_of(model), "data": str(data), **cfg.model_dump()},
             seed=cfg.seed) as run:
        res = train_rl(m, imdb_prefixes(data, cfg.n_prompts, cfg.prompt_words), cfg, out)
        training_history(res["history"], ("reward", "kl"), Path(out) / "finetune.png")
        run.results = {"last": res["history"][-1] if res["history"] else {}}
    return res


def finetune_dpo(model: ModelLike, data: str | os.PathLike[str], out: str | os.PathLike[str], cfg: DPOSettings, *,
                 swap: bool = False, limit: int | None = None) -> dict[str, Any]:
    """DPO on HH-RLHF or prompt/chosen/rejected pairs (``swap`` trains towards the rejected answers)."""
    m = as_model(model)
    pairs = load_preferences(data, swap=swap, limit=limit)
    with Run(out, "finetune dpo", {"model": name_of(model), "data": str(data), "swap": swap, "limit": limit,
                                   **cfg.model_dump()}, seed=cfg.seed) as run:
        res = train_dpo(m, pairs, cfg, out, swapped=swap)
        training_history(res["history"], ("preference_accuracy", "kl_estimate"), Path(out) / "finetune.png")
        run.results = {"last": res["history"][-1] if res["history"] else {}}
    return res
