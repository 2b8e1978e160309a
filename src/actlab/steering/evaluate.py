"""Evaluating behaviour under steering: the A/B sweep (layers x multipliers), open-ended generations
scored by a pluggable scorer, and the vocabulary view of a vector.

A/B probability: the prompt is the question followed by the start of the answer, ``"("``; the model's
next-token probabilities of the two answer letters are normalised, ``p = P(match) / (P(match) + P(other))``.
Sweep results (``sweep.json``, then ``sweep.csv``) are written after every cell (atomically) and finished
cells are skipped on a re-run unless ``overwrite`` is set.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import ABItem
from ..errors import InputError
from ..runs import write_json, write_text
from .apply import steer
from .prompts import PromptStyle, format_prompt, with_answer
from .scorers import Scorer
from .vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model


def _answer_prefix(answer: str) -> str:
    """The part of an answer before its letter (``"("`` for ``"(A)"``)."""
    from .datasets import answer_letter

    return answer[: answer.index(answer_letter(answer))]


@dataclass
class _ABPrompt:
    text: str
    match_id: int
    other_id: int


def _ab_prompts(model: Model, items: Sequence[ABItem], style: PromptStyle) -> list[_ABPrompt]:
    """Each question followed by its answer prefix (``"("``), and the token ids of the two letters."""
    tok = model.tokenizer
    special = style.add_special_tokens()
    out = []
    for k, it in enumerate(items):
        text = with_answer(model, it.question, _answer_prefix(it.matching), style)
        ids_p = tok(text, add_special_tokens=special)["input_ids"]
        letter_ids = []
        for letter in (it.matching_letter, it.not_matching_letter):
            full = tok(text + letter, add_special_tokens=special)["input_ids"]
            if full[:-1] != ids_p:
                raise InputError(f"item {k}: answer letter {letter!r} does not tokenize as one token after the "
                                 "prompt, so it cannot be scored by next-token probability")
            letter_ids.append(full[-1])
        out.append(_ABPrompt(text, letter_ids[0], letter_ids[1]))
    return out


@torch.no_grad()
def ab_probabilities(model: Model, items: Sequence[ABItem], style: PromptStyle, *, batch_size: int = 16,
                     prompts: list[_ABPrompt] | None = None) -> torch.Tensor:
    """p(matching answer), normalised over the two letters, per item (under any active steering)."""
    prompts = prompts or _ab_prompts(model, items, style)
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        batch = model.tokenize([p.text for p in chunk], padding_side="left",
                               add_special_tokens=style.add_special_tokens())
        logits = model.last_logits(**batch)
        lp = torch.log_softmax(logits, -1)
        a = lp[torch.arange(len(chunk)), torch.tensor([p.match_id for p in chunk])]
        b = lp[torch.arange(len(chunk)), torch.tensor([p.other_id for p in chunk])]
        out.append(torch.sigmoid(a - b).cpu())
    return torch.cat(out)


@dataclass
class SweepResult:
    """p(matching) per (layer, multiplier) cell, averaged over the questions."""

    cells: dict[str, dict[str, Any]]
    layers: list[int]
    multipliers: list[float]
    questions_per_second: float | None = None

    def grid(self) -> torch.Tensor:
        g = torch.full((len(self.layers), len(self.multipliers)), float("nan"))
        for i, layer in enumerate(self.layers):
            for j, m in enumerate(self.multipliers):
                c = self.cells.get(cell_key(layer, m))
                if c is not None:
                    g[i, j] = c["p_matching"]
        return g


def cell_key(layer: int, multiplier: float) -> str:
    return f"{layer}:{multiplier:g}"


def ab_sweep(
    model: Model,
    vector: SteeringVector,
    items: Sequence[ABItem],
    *,
    layers: Sequence[int],
    multipliers: Sequence[float],
    style: PromptStyle,
    positions: str | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> SweepResult:
    """p(matching behaviour) under steering at each layer x multiplier (multiplier 0 is run once)."""
    if not layers:
        raise InputError("the layer list is empty; give at least one layer to sweep")
    if not multipliers:
        raise InputError("the multiplier grid is empty; give at least one multiplier")
    if not items:
        raise InputError("no A/B questions to evaluate")
    vector.check_fits(model)
    for layer in layers:
        vector[layer]  # raises a clear error for a layer the vector lacks
    positions = positions or ("from_eoi" if style.chat else "all")
    if positions == "generated":
        raise InputError("positions='generated' steers nothing in a single-forward A/B evaluation; "
                         "use 'from_eoi' or 'all'")
    out = Path(out_dir) if out_dir else None
    results_path = out / "sweep.json" if out else None
    cells: dict[str, dict[str, Any]] = {}
    config = {"model": model.name, "vector": vector.meta, "point": vector.point, "positions": positions,
              "chat": style.chat, "n_questions": len(items)}
    if results_path is not None and results_path.exists() and not overwrite:
        saved = json.loads(results_path.read_text())
        if saved.get("config", {}).get("n_questions") == len(items):
            cells = saved.get("cells", {})
    prompts = _ab_prompts(model, items, style)
    n_done, t_spent = 0, 0.0

    def save() -> None:
        if results_path is not None:
            write_json(results_path, {"config": config, "cells": cells})

    baseline = None
    for layer in layers:
        for m in multipliers:
            key = cell_key(layer, m)
            if key in cells:
                continue
            t0 = time.perf_counter()
            if m == 0:
                if baseline is None:
                    baseline = ab_probabilities(model, items, style, batch_size=batch_size, prompts=prompts)
                    t_spent += time.perf_counter() - t0
                    n_done += len(items)
                p = baseline
            else:
                with steer(model, vector, m, layers=[layer], positions=positions):
                    p = ab_probabilities(model, items, style, batch_size=batch_size, prompts=prompts)
                t_spent += time.perf_counter() - t0
                n_done += len(items)
            cells[key] = {"layer": layer, "multiplier": m, "p_matching": float(p.mean()),
                          "p_matching_sem": float(p.std() / max(len(p), 1) ** 0.5) if len(p) > 1 else 0.0,
                          "n": len(p), "per_question": [round(float(x), 5) for x in p]}
            save()
            if progress is not None:
                progress(1)
    res = SweepResult(cells, list(layers), list(multipliers), n_done / t_spent if t_spent > 0 else None)
    if out is not None:
        write_text(out / "sweep.csv", sweep_csv(res))
    return res


def sweep_csv(res: SweepResult) -> str:
    """Every cell as CSV rows (layer, multiplier, p_matching, its standard error, n)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", "multiplier", "p_matching", "p_matching_sem", "n"])
    for c in sorted(res.cells.values(), key=lambda c: (c["layer"], c["multiplier"])):
        w.writerow([c["layer"], c["multiplier"], f"{c['p_matching']:.6f}", f"{c['p_matching_sem']:.6f}", c["n"]])
    return buf.getvalue()


@torch.no_grad()
def steered_generations(model: Model, prompts: Sequence[str], vector: SteeringVector, *, layers: Sequence[int],
                        multipliers: Sequence[float], style: PromptStyle, positions: str = "all",
                        max_new_tokens: int = 40, do_sample: bool = False, seed: int = 0, batch_size: int = 8,
                        **gen_kwargs: Any) -> list[dict[str, Any]]:
    """Generations for every prompt at every multiplier (0 = unsteered)."""
    if not multipliers:
        raise InputError("the multiplier grid is empty")
    texts = [format_prompt(model, p, style) for p in prompts]
    rows = []
    for m in multipliers:
        outs: list[str] = []
        for s in range(0, len(texts), batch_size):
            chunk = texts[s:s + batch_size]
            torch.manual_seed(seed)
            kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                      add_special_tokens=style.add_special_tokens(), **gen_kwargs)
            if m == 0:
                outs += model.generate_text(chunk, **kw)
            else:
                with steer(model, vector, m, layers=layers, positions=positions):
                    outs += model.generate_text(chunk, **kw)
        rows += [{"multiplier": m, "prompt": p, "text": o} for p, o in zip(prompts, outs, strict=True)]
    return rows


def score_generations(rows: list[dict[str, Any]], scorer: Scorer) -> dict[float, float]:
    """Add ``score`` to each row; return the mean score per multiplier."""
    scores = scorer([r["prompt"] for r in rows], [r["text"] for r in rows])
    for r, s in zip(rows, scores, strict=True):
        r["score"] = s
        r["scorer"] = scorer.name
    means: dict[float, list[float]] = {}
    for r in rows:
        means.setdefault(r["multiplier"], []).append(r["score"])
    return {m: sum(v) / len(v) for m, v in means.items()}
