"""Evaluating behaviour under steering: the A/B sweep (layers x multipliers), open-ended generations
scored by a pluggable scorer, and the vocabulary view of a vector.

A/B probability: the question followed by each answer is tokenized; the tokens both share are the prompt
(the question and e.g. ``"("``) and the model's next-token probabilities of the two answers' first differing
tokens (``A``/``B``, ``Yes``/``No``) are normalised, ``p = P(match) / (P(match) + P(other))``. Mean
p(matching) hides a model that gives the same answer to every question (on a balanced set it averages to
~0.5), so every cell also reports the answer bias, the share of flipped answers and a collapse flag
(:func:`cell_stats`).
Sweep results (``sweep.json``, ``sweep.csv``) are written atomically when the sweep ends; its progress (the
finished cells, and the questions done so far in the cells being evaluated) is checkpointed after every batch of
questions through the run folder's resume record (:class:`actlab.runs.Resume`), so a re-run continues from
there and skips finished cells unless ``overwrite`` is set. The cells share each question's prefix
(:mod:`actlab.steering.prefix`).
"""

from __future__ import annotations

import csv
import hashlib
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
from ..hooks.points import HookPoint
from ..hooks.positions import check_steer_positions
from ..parallel import block_range, broadcast, gather, rank_and_world
from ..progress import info as progress_info
from ..progress import task as progress_task
from ..runs import Resume, write_json, write_text
from .apply import steer
from .prefix import boundaries, iter_cell_logits, pad_rows, shared_prefix_generations
from .prompts import PromptStyle, format_prompt, with_answer
from .scorers import Scorer
from .vector import SteeringVector

if TYPE_CHECKING:
    from ..models.model import Model


@dataclass
class ABPrompt:
    """The tokens both answers share (the question and the answer's start, e.g. ``(``) and the first token of
    each answer after them (``A``/``B``, `` Yes``/`` No``)."""

    ids: list[int]
    match_id: int
    other_id: int
    match_label: str
    other_label: str


def ab_prompts(model: Model, items: Sequence[ABItem], style: PromptStyle) -> list[ABPrompt]:
    """Tokenize the question followed by each answer and cut where the two tokenizations part: the shared
    tokens are the prompt, the first differing tokens are what is scored (so ``(A`` merged into one token, a
    space merged into `` Yes``, and plain or chat prompts all work)."""
    tok = model.tokenizer
    special = style.add_special_tokens()
    out = []
    for k, it in enumerate(items):
        ids_m = tok(with_answer(model, it.question, it.matching, style), add_special_tokens=special)["input_ids"]
        ids_o = tok(with_answer(model, it.question, it.not_matching, style), add_special_tokens=special)["input_ids"]
        n = 0
        while n < min(len(ids_m), len(ids_o)) and ids_m[n] == ids_o[n]:
            n += 1
        if n == 0 or n >= min(len(ids_m), len(ids_o)):
            raise InputError(f"item {k}: the answers {it.matching!r} and {it.not_matching!r} do not differ in a "
                             "token after a shared prompt, so they cannot be scored by next-token probability")
        out.append(ABPrompt(list(ids_m[:n]), int(ids_m[n]), int(ids_o[n]), it.matching_label,
                             it.not_matching_label))
    return out


def _left_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> dict[str, torch.Tensor]:
    ids, mask = pad_rows(rows, pad, "left")
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@torch.no_grad()
def ab_probabilities(model: Model, items: Sequence[ABItem], style: PromptStyle, *, batch_size: int = 16,
                     prompts: list[ABPrompt] | None = None) -> torch.Tensor:
    """p(matching answer), normalised over the two answers, per item (under any active steering)."""
    prompts = prompts or ab_prompts(model, items, style)
    pad = getattr(model.tokenizer, "pad_token_id", None) or 0
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        logits = model.last_logits(**_left_pad([p.ids for p in chunk], pad, model.device))
        lp = torch.log_softmax(logits, -1)
        a = lp[torch.arange(len(chunk)), torch.tensor([p.match_id for p in chunk])]
        b = lp[torch.arange(len(chunk)), torch.tensor([p.other_id for p in chunk])]
        out.append(torch.sigmoid(a - b).cpu())
    return torch.cat(out)


COLLAPSE_SHARE = 0.95


def first_label(prompts: Sequence[ABPrompt]) -> str:
    """The label whose probability measures answer bias: ``A`` for lettered items, else ``Yes`` if present, else
    the alphabetically first label."""
    labels = {p.match_label for p in prompts} | {p.other_label for p in prompts}
    return "A" if "A" in labels else "Yes" if "Yes" in labels else min(labels)


def cell_stats(p: torch.Tensor, prompts: Sequence[ABPrompt], baseline: torch.Tensor | None, *,
               label: str, collapse_share: float = COLLAPSE_SHARE) -> dict[str, Any]:
    """What one sweep cell shows beyond mean p(matching), which hides collapse on a balanced set:

    - ``p_first``: mean probability of the answer labelled ``label`` (``A``): the letter bias;
    - ``flip_fraction``: share of questions whose preferred answer differs from the unsteered run's;
    - ``majority_share``: share of questions whose preferred answer carries the most common label;
    - ``collapsed``: ``majority_share >= collapse_share`` - the model gives the same answer whatever the
      question (then p(matching) only measures the dataset's label balance)."""
    is_first = torch.tensor([pr.match_label == label for pr in prompts])
    other_first = torch.tensor([pr.other_label == label for pr in prompts])
    p_first = torch.where(is_first, p, torch.where(other_first, 1 - p, torch.zeros_like(p)))
    prefers_match = p > 0.5
    chosen = [pr.match_label if m else pr.other_label for pr, m in zip(prompts, prefers_match.tolist(), strict=True)]
    counts: dict[str, int] = {}
    for c in chosen:
        counts[c] = counts.get(c, 0) + 1
    majority = max(counts.values()) / len(chosen)
    out = {"p_first": float(p_first.mean()), "first_label": label, "majority_share": majority,
           "majority_label": max(counts, key=lambda k: counts[k]), "collapsed": bool(majority >= collapse_share)}
    out["flip_fraction"] = (float((prefers_match != (baseline > 0.5)).double().mean()) if baseline is not None
                            else 0.0)
    return out


@dataclass
class SweepResult:
    """Per (layer, multiplier) cell: p(matching) averaged over the questions, and the answer-bias diagnostics
    of :func:`cell_stats` (``p_first``, ``flip_fraction``, ``majority_share``, ``collapsed``)."""

    cells: dict[str, dict[str, Any]]
    layers: list[int]
    multipliers: list[float]
    questions_per_second: float | None = None  # questions through every cell, as the progress line counts
    evaluations_per_second: float | None = None  # question x cell evaluations

    def baseline(self) -> dict[str, Any] | None:
        """The unsteered cell (multiplier 0; every layer's x0 cell is the same run)."""
        return next((c for c in self.cells.values() if c.get("multiplier") == 0), None)

    def unmoved(self, z: float = 2.0) -> tuple[str, float] | None:
        """None when some steered cell's p(matching) differs from the unsteered one by more than ``z`` standard
        errors (of the difference); else the cell that moved most and its shift: the vector did not change the
        A/B answers measurably."""
        base = self.baseline()
        if base is None:
            return None
        best: tuple[str, float] | None = None
        for key, c in self.cells.items():
            if c.get("multiplier") == 0 or c.get("p_matching") is None:
                continue
            shift = float(c["p_matching"]) - float(base["p_matching"])
            se = (float(c.get("p_matching_sem", 0.0)) ** 2 + float(base.get("p_matching_sem", 0.0)) ** 2) ** 0.5
            if abs(shift) > z * se:
                return None
            if best is None or abs(shift) > abs(best[1]):
                best = (key, shift)
        return best

    def grid(self, key: str = "p_matching") -> torch.Tensor:
        g = torch.full((len(self.layers), len(self.multipliers)), float("nan"))
        for i, layer in enumerate(self.layers):
            for j, m in enumerate(self.multipliers):
                c = self.cells.get(cell_key(layer, m))
                if c is not None and c.get(key) is not None:
                    g[i, j] = float(c[key])
        return g

    def collapsed_cells(self) -> list[str]:
        return [k for k, c in self.cells.items() if c.get("collapsed")]


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
    cells_per_batch: int = 4,
    progress: Callable[[int], None] | None = None,
    collapse_share: float = COLLAPSE_SHARE,
) -> SweepResult:
    """p(matching behaviour) under steering at each layer x multiplier (multiplier 0 is run once), with the
    answer-bias diagnostics of :func:`cell_stats` per cell.

    Evaluated question-batch by question-batch (``batch_size`` questions), every cell at once: with
    ``from_eoi`` the question's tokens before the end of instruction are run once and their KV cache reused by
    every cell, and ``cells_per_batch`` cells share a forward (:mod:`actlab.steering.prefix`). The results
    equal steering each cell in turn to float round-off (tested); progress is checkpointed after every batch
    of questions."""
    if not layers:
        raise InputError("the layer list is empty; give at least one layer to sweep")
    if not multipliers:
        raise InputError("the multiplier grid is empty; give at least one multiplier")
    if not items:
        raise InputError("no A/B questions to evaluate")
    vector.check_fits(model)
    for layer in layers:
        vector[layer]  # raises a clear error for a layer the vector lacks
    positions = check_steer_positions(positions or "auto")
    if positions == "generated":
        raise InputError("positions='generated' steers nothing in a single-forward A/B evaluation; "
                         "use 'auto', 'from_eoi' or 'all'")
    out = Path(out_dir) if out_dir else None
    results_path = out / "sweep.json" if out else None
    cells: dict[str, dict[str, Any]] = {}
    config = {"model": model.name, "vector": vector.meta, "vector_sha256": vector_fingerprint(vector, layers),
              "point": vector.point, "positions": positions, "chat": style.chat, "system": style.system,
              "n_questions": len(items), "questions_sha256": items_fingerprint(items)}
    rank, world = rank_and_world()
    resume = (Resume(out, "steer sweep", {k: config[k] for k in RESUME_KEYS}, overwrite=overwrite)
              if out is not None and rank == 0 else None)
    saved = resume.load() if resume is not None else None
    saved_state = saved[0] if saved is not None else {}
    cells = dict(saved_state.get("cells") or {})
    if world > 1:  # every rank evaluates the same cells: rank 0's record decides
        cells = broadcast(cells)
    prompts = ab_prompts(model, items, style)
    label = first_label(prompts)
    config["first_label"] = label
    config["matching_labels"] = [pr.match_label for pr in prompts]
    config["collapse_share"] = collapse_share
    todo = [(layer, m) for layer in layers for m in multipliers
            if not (cell_key(layer, m) in cells and "collapsed" in cells[cell_key(layer, m)])]
    if len(todo) < len(layers) * len(multipliers):
        progress_info(f"sweep: {len(layers) * len(multipliers) - len(todo)} cells done earlier, reused")
    saved_base = next((c for c in cells.values() if c.get("multiplier") == 0 and "per_question" in c), None)
    baseline = torch.tensor(saved_base["per_question"], dtype=torch.float32) if saved_base is not None else None
    # one evaluation per distinct setting: every multiplier-0 cell is the unsteered run
    keys = sorted({cell_key(0, 0) if m == 0 else cell_key(layer, m) for layer, m in todo}
                  | ({cell_key(0, 0)} if baseline is None and todo else set()))
    specs = {cell_key(layer, m): (layer, m) for layer, m in todo}
    evals = [{} if k == cell_key(0, 0) else
             {HookPoint(specs[k][0], vector.point): specs[k][1] * vector[specs[k][0]].double()} for k in keys]
    p_all = torch.full((len(items), len(keys)), float("nan"))
    first, stop = block_range(len(items), batch_size, rank, world) if world > 1 else (0, len(items))
    part = saved_state.get("rows_done")
    partial = (part["per_question"] if world == 1 and isinstance(part, dict) and part.get("cells") == keys
               else None)  # under torch.distributed only finished cells are resumed
    if partial is not None:
        first = len(partial)
        p_all[:first] = torch.tensor(partial, dtype=torch.float32)
        progress_info(f"sweep: {first} of {len(items)} questions done earlier in these cells, reused")
    n_done, n_questions, t_spent = 0, 0, 0.0

    def checkpoint(rows_done: int) -> None:
        if resume is not None:
            resume.save({"cells": cells, "rows_done": {"cells": keys, "per_question": p_all[:rows_done].tolist()}})

    rows = [pr.ids for pr in prompts]
    starts = boundaries(model, rows, positions)
    n_eoi = sum(1 for st in starts if st > 0)
    config["steered_from"] = (f"the end of the instruction in {n_eoi} of {len(starts)} prompts, the first token in "
                              f"the others" if positions == "auto" else positions)
    if todo:
        match = torch.tensor([pr.match_id for pr in prompts])
        other = torch.tensor([pr.other_id for pr in prompts])

        def two_answers(logits: torch.Tensor, sl: slice) -> torch.Tensor:
            lp = torch.log_softmax(logits, -1)
            a = lp.gather(-1, match[sl].to(lp.device)[:, None, None].expand(-1, lp.shape[1], 1))[..., 0]
            b = lp.gather(-1, other[sl].to(lp.device)[:, None, None].expand(-1, lp.shape[1], 1))[..., 0]
            return torch.sigmoid(a - b).cpu()

        with progress_task("sweep", total=stop - first, unit="questions", callback=progress) as task:
            t0 = time.perf_counter()
            labels = [{"multiplier": 0.0} if key == cell_key(0, 0) else
                      {"layer": specs[key][0], "multiplier": specs[key][1]} for key in keys]
            for sl, p in iter_cell_logits(model, rows, starts, evals, batch_size=batch_size,
                                          cells_per_batch=cells_per_batch, first_row=first, stop_row=stop,
                                          reduce=two_answers, labels=labels,
                                          source={"positions": positions, **vector.provenance()}):
                p_all[sl] = p
                n_done += p.shape[0] * p.shape[1]
                n_questions += p.shape[0]
                if world == 1 and sl.stop < len(items):  # checkpoint: the questions done so far in every cell
                    checkpoint(sl.stop)
                task.advance(p.shape[0], cells=len(keys))
            t_spent = time.perf_counter() - t0
        if world > 1:  # every rank's questions, in order
            shares = gather((first, stop, p_all[first:stop]))
            for lo, hi, p in shares:
                p_all[lo:hi] = p
            n_done *= world
            n_questions *= world
        if baseline is None:
            baseline = p_all[:, keys.index(cell_key(0, 0))]
        for layer, m in todo:
            p = p_all[:, keys.index(cell_key(0, 0) if m == 0 else cell_key(layer, m))]
            cells[cell_key(layer, m)] = {
                "layer": layer, "multiplier": m, "p_matching": float(p.mean()),
                "p_matching_sem": float(p.std() / max(len(p), 1) ** 0.5) if len(p) > 1 else 0.0,
                "n": len(p), **cell_stats(p, prompts, baseline, label=label, collapse_share=collapse_share),
                "per_question": [round(float(x), 5) for x in p]}
    if resume is not None:
        resume.save({"cells": cells})
        assert results_path is not None
        write_json(results_path, {"config": config, "cells": cells})
    res = SweepResult(cells, list(layers), list(multipliers), n_questions / t_spent if t_spent > 0 else None,
                      n_done / t_spent if t_spent > 0 else None)
    if out is not None and rank == 0:
        write_text(out / "sweep.csv", sweep_csv(res))
    return res


RESUME_KEYS = ("model", "vector_sha256", "point", "positions", "chat", "system", "n_questions", "questions_sha256")


def vector_fingerprint(vector: SteeringVector, layers: Sequence[int]) -> str:
    """sha256 of the swept layers' vectors (float32 bytes): the same numbers give the same fingerprint, whatever
    file or object they came from."""
    h = hashlib.sha256()
    for layer in sorted(set(layers)):
        h.update(f"{layer}:".encode())
        h.update(vector[layer].detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def items_fingerprint(items: Sequence[ABItem]) -> str:
    """sha256 of the questions and their answers, in order."""
    payload = json.dumps([[it.question, it.matching, it.not_matching] for it in items], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def sweep_csv(res: SweepResult) -> str:
    """Every cell as CSV rows: p(matching) and its standard error, the answer-bias diagnostics, n."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", "multiplier", "p_matching", "p_matching_sem", "first_label", "p_first", "flip_fraction",
                "majority_label", "majority_share", "collapsed", "n"])
    for c in sorted(res.cells.values(), key=lambda c: (c["layer"], c["multiplier"])):
        w.writerow([c["layer"], c["multiplier"], f"{c['p_matching']:.6f}", f"{c['p_matching_sem']:.6f}",
                    c.get("first_label", ""), f"{c.get('p_first', float('nan')):.6f}",
                    f"{c.get('flip_fraction', float('nan')):.6f}", c.get("majority_label", ""),
                    f"{c.get('majority_share', float('nan')):.6f}", c.get("collapsed", ""), c["n"]])
    return buf.getvalue()


@torch.no_grad()
def steered_generations(model: Model, prompts: Sequence[str], vector: SteeringVector, *, layers: Sequence[int],
                        multipliers: Sequence[float], style: PromptStyle, positions: str = "auto",
                        max_new_tokens: int = 40, do_sample: bool = False, seed: int = 0, batch_size: int = 8,
                        **gen_kwargs: Any) -> list[dict[str, Any]]:
    """Generations for every prompt at every multiplier (0 = unsteered). Greedy generations steered from the
    end of instruction share each prompt's prefix across the multipliers (:func:`shared_prefix_generations`);
    sampling keeps one ``generate()`` per multiplier so each sees the same random stream as before."""
    if not multipliers:
        raise InputError("the multiplier grid is empty")
    texts = [format_prompt(model, p, style) for p in prompts]
    positions = check_steer_positions(positions)
    # a chat-templated prompt has its end of instruction in every row, so auto steers from it there
    if positions in ("from_eoi", "auto") and style.chat and not do_sample and not gen_kwargs:
        shared = shared_prefix_generations(model, texts, vector, layers=layers, multipliers=multipliers,
                                           style=style, max_new_tokens=max_new_tokens, batch_size=batch_size)
        if shared is not None:
            return [{"multiplier": m, "prompt": p, "text": o} for m in multipliers
                    for p, o in zip(prompts, shared[m], strict=True)]
    rows = []
    with progress_task("generating", total=len(multipliers) * len(texts), unit="prompts") as task:
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
                task.advance(len(chunk), multiplier=m)
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
