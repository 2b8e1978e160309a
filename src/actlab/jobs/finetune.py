"""Fine-tuning jobs: RL with the lexicon reward, DPO on preference pairs; each in a run folder with the
fine-tuned model, ``finetune.json`` and ``finetune.png``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import imdb_prefixes, load_preferences
from ..finetune import DPOSettings, RLConfig, train_dpo, train_rl
from ..report.figures import training_history
from ..runs import Run
from .common import ModelLike, as_model, name_of


def finetune_rl(model: ModelLike, data: str | os.PathLike[str] | Sequence[str], out: str | os.PathLike[str],
                cfg: RLConfig) -> dict[str, Any]:
    """GRPO/RLOO with the VADER-lexicon reward and a KL penalty on IMDb review prefixes (``data``: the IMDb file,
    or the prefixes read beforehand with :func:`actlab.data.imdb_prefixes`)."""
    prompts = imdb_prefixes(data, cfg.n_prompts, cfg.prompt_words) if isinstance(data, (str, os.PathLike)) \
        else list(data)
    m = as_model(model)
    with Run(out, "finetune rl", {"model": name_of(model), "data": name_of(data), **cfg.model_dump()},
             seed=cfg.seed) as run:
        res = train_rl(m, prompts, cfg, out)
        training_history(res["history"], ("reward", "kl"), Path(out) / "finetune.png")
        run.results = {"last": res["history"][-1] if res["history"] else {}}
    return res


def finetune_dpo(model: ModelLike, data: str | os.PathLike[str] | Sequence[dict[str, str]],
                 out: str | os.PathLike[str], cfg: DPOSettings, *, swap: bool = False, limit: int | None = None
                 ) -> dict[str, Any]:
    """DPO on HH-RLHF or prompt/chosen/rejected pairs (a file, or the pairs read beforehand with
    :func:`actlab.data.load_preferences`; ``swap`` trains towards the rejected answers)."""
    pairs = load_preferences(data, swap=swap, limit=limit) if isinstance(data, (str, os.PathLike)) else list(data)
    m = as_model(model)
    with Run(out, "finetune dpo", {"model": name_of(model), "data": name_of(data), "swap": swap, "limit": limit,
                                   **cfg.model_dump()}, seed=cfg.seed) as run:
        res = train_dpo(m, pairs, cfg, out, swapped=swap)
        training_history(res["history"], ("preference_accuracy", "mean_log_ratio"), Path(out) / "finetune.png")
        run.results = {"last": res["history"][-1] if res["history"] else {}}
    return res
