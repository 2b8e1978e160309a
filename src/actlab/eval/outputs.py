"""An evaluation's files: ``results.jsonl`` (one row per cell x split x item), ``leaderboard.json``/``.csv``
(per behaviour x method: the chosen cell, its test numbers, open-ended scores and side effects),
``generations.json`` (test generations side by side), ``judgements.jsonl`` (every judge rating with its prompt
and reply) and the offline page ``index.html``. Written atomically by rank 0; NaN is written as null."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import TYPE_CHECKING, Any

from ..runs import write_json, write_text
from .metrics import LETTER_BIAS_WARN

if TYPE_CHECKING:
    from ..models.model import Model
    from .config import EvalConfig
    from .harness import Evaluation

CSV_COLUMNS = ("behaviour", "method", "variant", "layer", "strength", "within_kl_limit", "validation_effect", "kl",
               "test_p", "test_p_low", "test_p_high", "test_effect", "test_effect_low", "test_effect_high",
               "test_p_first", "test_letter_driven", "test_collapsed", "steerability_mean_slope",
               "anti_steerable_fraction", "open_score", "open_effect", "open_perplexity", "open_distinct_2",
               "open_repetition", "judge_behaviour", "judge_axbench_hm", "judge_unparsed", "capability_accuracy")


def clean(x: Any) -> Any:
    """NaN and infinities as None (JSON has no NaN), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v) for v in x]
    return x


def leaderboard_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(["" if r.get(c) is None else f"{r[c]:.6g}" if isinstance(r.get(c), float) else r[c]
                    for c in CSV_COLUMNS])
    return buf.getvalue()


def write_outputs(ev: Evaluation, cfg: EvalConfig, model: Model) -> dict[str, Any]:
    """Write every output of a finished evaluation; returns the leaderboard."""
    from ..report.eval import eval_page

    out = cfg.out
    write_text(out / "results.jsonl", "".join(json.dumps(clean(r), ensure_ascii=False) + "\n" for r in ev.results))
    board = clean({
        "kind": "eval_leaderboard", "model": model.name, "behaviours": [b.name for b in cfg.behaviours],
        "methods": cfg.methods, "layers": ev.ctx.layers, "positions": cfg.grid.positions,
        "selection": {"split": "validation", "rule": "largest effect in the behaviour's direction with next-token "
                      f"KL on neutral text <= {cfg.selection.max_kl} nats", "max_kl": cfg.selection.max_kl},
        "reported_on": "test", "letter_bias_warn": LETTER_BIAS_WARN,
        "rows": ev.board, "curves": ev.curves, "warnings": ev.warnings, "notes": ev.ctx.notes,
        "judge": None if cfg.judge is None else (cfg.judge.model or cfg.judge.hf)})
    write_json(out / "leaderboard.json", board)
    write_text(out / "leaderboard.csv", leaderboard_csv(board["rows"]))
    write_json(out / "generations.json", clean(ev.samples))
    if ev.judgements:
        write_text(out / "judgements.jsonl",
                   "".join(json.dumps(clean(r), ensure_ascii=False) + "\n" for r in ev.judgements))
    eval_page(board, ev.samples, out)
    return board
