"""``actlab eval run``: every method of a config on every behaviour, the same held-out protocol for all.

Per behaviour: the methods' cells (layers x strengths) are measured on the validation and test A/B items in
both letter orders and on neutral text (KL); for each method the cell with the largest validation effect whose
KL stays within the limit is chosen (:func:`select`, which is given validation numbers only); the chosen cells
are then reported on the test split - p(matching) and the effect against the unsteered model with bootstrap
intervals, the letter balance, steerability slopes (additive methods), open-ended generations with judge-free
scores and the judge's ratings, and capability accuracy. Behaviours without A/B items (sentiment, refusal) are
selected on validation prompts' generations scored by their scorer.

Every step's result is saved in the run folder when it finishes; a re-run (after kill -9 anywhere) continues
from the last finished step with identical results. Under torchrun the items are split across processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import imdb_prefixes
from ..errors import InputError
from ..hooks.points import parse_layers
from ..parallel import rank_and_world
from ..progress import info
from ..runs import Resume, Run
from .behaviours import Behaviour, data_dir, load_behaviour, read_capability
from .config import EvalConfig, load_config
from .context import Context
from .grid import ab_pass, capability_pass, neutral_base, neutral_pass, per_item, summary
from .methods import METHODS, Cell
from .metrics import bootstrap_ci, steerability
from .open_ended import generations, judge_free, mean_scores
from .outputs import write_outputs

SPLITS = ("validation", "test")


def select(candidates: Sequence[dict[str, Any]], max_kl: float, direction: str = "increase") -> tuple[int, bool]:
    """The chosen cell among one method's ``candidates`` (dicts with ``effect`` and ``kl``, validation numbers
    only): the largest effect in the behaviour's direction among the cells whose KL is within ``max_kl``; when
    none is, the cell with the smallest KL. Ties go to the weaker strength, then the earlier layer. Returns
    ``(index, within the limit)``."""
    if not candidates:
        raise InputError("no cell to choose from")
    sign = 1.0 if direction == "increase" else -1.0
    ok = [i for i, c in enumerate(candidates) if c["kl"] is not None and c["kl"] <= max_kl]
    pool = ok or [min(range(len(candidates)), key=lambda i: math.inf if candidates[i]["kl"] is None
                      else candidates[i]["kl"])]

    def key(i: int) -> tuple:
        c = candidates[i]
        eff = c["effect"] if c["effect"] is not None and math.isfinite(c["effect"]) else -math.inf
        return (sign * eff if math.isfinite(eff) else -math.inf, -abs(c.get("strength") or 0.0),
                -(c.get("layer") or 0))

    return max(pool, key=key), bool(ok)


def _neutral(cfg: EvalConfig) -> list[str]:
    if cfg.side_effects.neutral is not None:
        from ..data import read_texts

        return read_texts(cfg.side_effects.neutral, limit=cfg.side_effects.n_neutral)
    return imdb_prefixes(data_dir(cfg) / "imdb" / "imdb_test_sample.csv", cfg.side_effects.n_neutral, words=24)


def prepare(cfg: EvalConfig) -> tuple[list[Behaviour], list[str], list[dict]]:
    """Every input read and checked before a model loads: the behaviours, the neutral texts, the capability set."""
    behaviours = [load_behaviour(b, cfg) for b in cfg.behaviours]
    for b in behaviours:
        if not b.has_ab and b.scorer is None and cfg.judge is None:
            raise InputError(f"behaviour {b.name}: without A/B items its effect is measured on generations, which "
                             "needs a scorer (sentiment, refusal) or a judge: in the config")
    cap = read_capability(cfg.side_effects.capability, cfg.side_effects.n_capability) \
        if cfg.side_effects.capability is not None else []
    return behaviours, _neutral(cfg), cap


def _by_variant(cells: Sequence[Cell]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"plain": []}
    for i, c in enumerate(cells):
        out.setdefault(c.variant, []).append(i)
    return out


class Evaluation:
    """One evaluation's state while it runs (see module docstring)."""

    def __init__(self, ctx: Context, neutral: list[str], capability: list[dict]):
        self.ctx, self.neutral, self.capability = ctx, neutral, capability
        self.methods = [METHODS[m]() for m in ctx.cfg.methods]
        self.base_logits: torch.Tensor | None = None
        self.judge = None
        self.results: list[dict[str, Any]] = []  # results.jsonl
        self.board: list[dict[str, Any]] = []  # leaderboard rows
        self.curves: dict[str, list[dict[str, Any]]] = {}  # per behaviour: every cell's validation numbers
        self.samples: dict[str, list[dict[str, Any]]] = {}  # per behaviour: test generations side by side
        self.judgements: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    # -- grid ---------------------------------------------------------------------------------------------
    def cells(self, beh: Behaviour) -> list[Cell]:
        """The plain unsteered cell first, then every method's cells (a method that cannot run on this
        behaviour is noted and left out)."""
        out = [Cell("baseline", "plain")]
        for m in self.methods:
            try:
                out += m.cells(self.ctx, beh, self.ctx.layers)
            except InputError as e:
                self.ctx.note(f"{beh.name}: method {m.name} left out: {e}")
        return out

    def kl(self, beh: Behaviour, cells: list[Cell]) -> list[float]:
        kl = [math.nan] * len(cells)
        for variant, idx in _by_variant(cells).items():
            def run(variant: str = variant, idx: list[int] = idx) -> list[float]:
                from ..steering.prompts import PromptStyle

                st = self.ctx.style(beh, variant)
                if self.base_logits is None:
                    self.base_logits = neutral_base(self.ctx, self.neutral)
                return neutral_pass(self.ctx, self.neutral, PromptStyle(chat=False, system=st.system,
                                                                        history=st.history),
                                    [cells[i] for i in idx], self.base_logits)
            for i, v in zip(idx, self.ctx.step(f"kl {beh.name} {variant}", run), strict=True):
                kl[i] = v
        return kl

    def ab(self, beh: Behaviour, cells: list[Cell]) -> dict[str, Any]:
        items = beh.validation + beh.test
        return {variant: self.ctx.step(f"ab {beh.name} {variant}", lambda variant=variant, idx=idx: ab_pass(
            self.ctx, items, self.ctx.style(beh, variant), [cells[i] for i in idx], f"A/B {beh.name} {variant}"))
            for variant, idx in _by_variant(cells).items()}

    def open_scores(self, beh: Behaviour, prompts: list[str], cells: list[Cell], split: str
                    ) -> tuple[list[list[str]], list[list[dict[str, Any]]]]:
        """Generations ``[cell][prompt]`` and their judge-free scores, one step per variant."""
        gens: list[list[str]] = [[] for _ in cells]
        scores: list[list[dict[str, Any]]] = [[] for _ in cells]
        for variant, idx in _by_variant(cells).items():
            if not idx:
                continue

            def run(variant: str = variant, idx: list[int] = idx) -> dict[str, Any]:
                g = generations(self.ctx, beh, prompts, variant, [cells[i] for i in idx])
                per_cell = [[row[c] for row in g] for c in range(len(idx))]
                return {"texts": per_cell, "scores": [judge_free(self.ctx, beh, prompts, t) for t in per_cell]}

            got = self.ctx.step(f"open {split} {beh.name} {variant}", run)
            for j, i in enumerate(idx):
                gens[i], scores[i] = got["texts"][j], got["scores"][j]
        return gens, scores

    # -- one behaviour ------------------------------------------------------------------------------------
    def behaviour(self, beh: Behaviour) -> None:
        cfg = self.ctx.cfg
        info(f"behaviour {beh.name}: {len(beh.validation)} validation / {len(beh.test)} test A/B items, "
             f"{len(beh.val_open)} / {len(beh.test_open)} open-ended prompts")
        cells = self.cells(beh)
        kl = self.kl(beh, cells)
        n_val = len(beh.validation)
        n = n_val + len(beh.test)
        val_stats: list[dict[str, Any]] = []
        if beh.has_ab:
            ab = self.ab(beh, cells)
            col = {i: (v, j) for v, idx in _by_variant(cells).items() for j, i in enumerate(idx)}
            base = per_item(ab["plain"], 0, n)
            for split, sl in (("validation", slice(0, n_val)), ("test", slice(n_val, n))):
                for i, c in enumerate(cells):
                    v, j = col[i]
                    d = per_item(ab[v], j, n)
                    self.results += [{"behaviour": beh.name, **c.label(), "split": split, "item": k - sl.start,
                                      "p_matching": round(float(d["p"][k]), 6),
                                      "logit_diff": round(float(d["ld"][k]), 6),
                                      **({"p_swapped": round(float(d["p_swapped"][k]), 6)}
                                         if not math.isnan(float(d["p_swapped"][k])) else {})}
                                     for k in range(sl.start, sl.stop)]
            stats = {split: [summary(ab[col[i][0]], col[i][1], sl, n, base, n_boot=cfg.bootstrap, seed=cfg.seed)
                             for i in range(len(cells))]
                     for split, sl in (("validation", slice(0, n_val)), ("test", slice(n_val, n)))}
            val_stats = [{"effect": s["effect"], "p": s["p"]} for s in stats["validation"]]
        else:  # selected on validation generations, scored by the behaviour's scorer
            _, sc = self.open_scores(beh, beh.val_open, cells, "validation")
            means = [mean_scores(s).get("score", math.nan) for s in sc]
            val_stats = [{"effect": m - means[0], "p": m} for m in means]
            stats = {"validation": val_stats, "test": [{} for _ in cells]}
        self.curves[beh.name] = [{**c.label(), "kl": kl[i], **val_stats[i]} for i, c in enumerate(cells)]
        # selection: validation numbers and KL only
        chosen: dict[str, tuple[int, bool]] = {}
        for m in self.methods:
            idx = [i for i, c in enumerate(cells) if c.method == m.name]
            if idx:
                k, within = select([{**val_stats[i], "kl": kl[i], "strength": cells[i].strength,
                                     "layer": cells[i].layer} for i in idx], cfg.selection.max_kl,
                                   beh.spec.direction)
                chosen[m.name] = (idx[k], within)
        picked = [0] + [i for i, _ in chosen.values()]
        test_cells = [cells[i] for i in picked]
        open_rows = self.open_test(beh, test_cells)
        cap = self.capability_scores(beh, test_cells)
        for j, i in enumerate(picked):
            c = cells[i]
            name = c.method
            row = {"behaviour": beh.name, **c.label(), "selected_on": "validation", "reported_on": "test",
                   "within_kl_limit": chosen[name][1] if name in chosen else True,
                   "validation_effect": val_stats[i]["effect"], "kl": kl[i],
                   **{f"test_{k}": v for k, v in stats["test"][i].items()}, **open_rows[j],
                   **({"capability_accuracy": cap[j]} if cap else {})}
            m = next((m for m in self.methods if m.name == name), None)
            if m is not None and m.additive and beh.has_ab and c.strength:
                row.update(self.steerability(beh, c))
            self.board.append(row)
            if row.get("test_letter_driven"):
                self.warnings.append(f"{beh.name}/{name}: on the test split p(first letter) = "
                                     f"{row['test_p_first']:.2f} - the answers follow the letter, not the content")
            if row.get("test_collapsed"):
                self.warnings.append(f"{beh.name}/{name}: the same letter wins on {row['test_majority_share']:.0%} "
                                     "of the test rows (collapsed)")

    def steerability(self, beh: Behaviour, cell: Cell) -> dict[str, Any]:
        """Tan et al.'s per-item slopes at the chosen cell's layer, over the configured multipliers (test split)."""
        mults = self.ctx.cfg.steerability.multipliers
        scale = 1.0 / float(cell.strength or 1.0)
        cells = [Cell(cell.method, cell.variant, cell.layer, m,
                      type(cell.edits)(add={p: v * (m * scale) for p, v in cell.edits.add.items()}))
                 for m in mults]
        got = self.ctx.step(f"steerability {beh.name} {cell.method}", lambda: ab_pass(
            self.ctx, beh.test, self.ctx.style(beh, cell.variant), cells, f"steerability {beh.name}"))
        ld = torch.stack([per_item(got, j, len(beh.test))["ld"] for j in range(len(cells))], 1)
        s = steerability(mults, ld)
        return {"steerability_mean_slope": s["mean_slope"], "steerability_std_slope": s["std_slope"],
                "anti_steerable_fraction": s["anti_steerable_fraction"], "steerability_slopes": s["slopes"],
                "steerability_multipliers": list(mults)}

    def open_test(self, beh: Behaviour, cells: list[Cell]) -> list[dict[str, Any]]:
        """Open-ended scores of the chosen cells on the test prompts (empty dicts when there are none)."""
        prompts = beh.test_open[:max(self.ctx.cfg.open_ended.n, 0)] if self.ctx.cfg.open_ended.n else []
        if not prompts:
            return [{} for _ in cells]
        gens, scores = self.open_scores(beh, prompts, cells, "test")
        out = []
        base = [r.get("score") for r in scores[0]]
        for j, c in enumerate(cells):
            row = {f"open_{k}": v for k, v in mean_scores(scores[j]).items()}
            mine = [r.get("score") for r in scores[j]]
            if j > 0 and all(isinstance(x, float) for x in base + mine):
                e, lo, hi = bootstrap_ci([a - b for a, b in zip(mine, base, strict=True)],
                                         n=self.ctx.cfg.bootstrap, seed=self.ctx.cfg.seed)
                row.update(open_effect=e, open_effect_low=lo, open_effect_high=hi)
            if self.judge is not None and self.ctx.rank == 0:
                from .judge import summarise

                rated = self.judge.rate(self.rubrics(), beh.description, prompts, gens[j])
                row.update(summarise(rated))
                self.judgements += [{"behaviour": beh.name, **c.label(), **r.record()} for x in rated
                                    for r in x.values()]
            out.append(row)
        self.samples[beh.name] = [{"input": p, "outputs": {cells[j].method: gens[j][k] for j in range(len(cells))}}
                                  for k, p in enumerate(prompts)]
        return out

    def rubrics(self) -> list[str]:
        from .judge import RUBRIC_SETS

        assert self.ctx.cfg.judge is not None
        return [r for name in self.ctx.cfg.judge.rubrics for r in RUBRIC_SETS[name]]

    def capability_scores(self, beh: Behaviour, cells: list[Cell]) -> list[float]:
        if not self.capability:
            return []
        acc = [math.nan] * len(cells)
        for variant, idx in _by_variant(cells).items():
            if not idx:
                continue
            got = self.ctx.step(f"capability {beh.name} {variant}", lambda variant=variant, idx=idx: capability_pass(
                self.ctx, self.capability, self.ctx.style(beh, variant), [cells[i] for i in idx]))
            for i, v in zip(idx, got, strict=True):
                acc[i] = v
        return acc


def _judge(cfg: EvalConfig, out: Path) -> Any:
    if cfg.judge is None:
        return None
    from .judge import ReplyCache, endpoint_judge, hf_judge

    cache = ReplyCache(cfg.judge.cache or out / "judge_cache")
    if cfg.judge.hf is not None:
        return hf_judge(cfg.judge.hf, cache=cache)
    assert cfg.judge.base_url is not None and cfg.judge.model is not None
    return endpoint_judge(cfg.judge.base_url, cfg.judge.model, cache=cache, concurrency=cfg.judge.concurrency,
                          retries=cfg.judge.retries, timeout=cfg.judge.timeout)


RESULT_KEYS = ("batch_size", "cells_per_batch", "out", "judge", "device")  # not in the resume settings


def run_eval(config: EvalConfig | str | Path, *, model: Any = None, overwrite: bool = False) -> dict[str, Any]:
    """Run an evaluation (a config or its YAML path); returns the leaderboard (also written to the run folder:
    ``results.jsonl``, ``leaderboard.json/.csv``, ``generations.json``, ``judgements.jsonl``, ``index.html``).
    ``model``: an already loaded :class:`~actlab.models.Model` (else the config's is loaded)."""
    from ..jobs.common import as_model

    cfg = config if isinstance(config, EvalConfig) else load_config(config)
    behaviours, neutral, capability = prepare(cfg)
    out = Path(cfg.out)
    rank, _ = rank_and_world()
    settings = cfg.model_dump(mode="json", exclude=set(RESULT_KEYS))
    m = as_model(model if model is not None else cfg.model, dtype=cfg.dtype, device=cfg.device)
    layers = parse_layers(cfg.grid.layers, m.n_layers) or list(range(m.n_layers))
    torch.manual_seed(cfg.seed)
    if rank != 0:
        ev = Evaluation(Context(cfg, m, out, None, layers), neutral, capability)
        for beh in behaviours:
            ev.behaviour(beh)
        return {}
    with Run(out, "eval run", cfg.model_dump(mode="json"), seed=cfg.seed) as run:
        resume = Resume(out, "eval", settings, overwrite=overwrite)
        ctx = Context(cfg, m, out, resume, layers)
        ev = Evaluation(ctx, neutral, capability)
        ev.judge = _judge(cfg, out)
        for beh in behaviours:
            ev.behaviour(beh)
        board = write_outputs(ev, cfg, m)
        run.results = {"behaviours": len(behaviours), "methods": cfg.methods, "rows": len(ev.results),
                       "warnings": len(ev.warnings)}
    return board


__all__ = ["Evaluation", "prepare", "run_eval", "select"]
