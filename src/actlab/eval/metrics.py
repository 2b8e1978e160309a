"""The evaluation's statistics, as pure functions of numbers (no model): bootstrap intervals, steerability
slopes, letter balance, the AxBench harmonic mean, and the judge-free text scores.

Sources: percentile bootstrap (Efron & Tibshirani 1993); steerability slopes and the anti-steerable fraction
(Tan et al. 2024, "Analyzing the generalization and reliability of steering vectors"); the AxBench aggregate
(Wu et al. 2025: harmonic mean of concept, instruction and fluency scores, 0 when any is 0); distinct-n
(Li et al. 2016).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..distributions import kl_from_logits  # noqa: F401  (part of the metrics vocabulary)

LETTER_BIAS_WARN = 0.3  # |2 p(A) - 1| above this: the cell's answers follow the letter more than the content


def bootstrap_ci(x: Sequence[float] | torch.Tensor, *, n: int = 1000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``x`` with a percentile bootstrap interval (``n`` resamples of the
    items, seeded). With one value the interval is the value itself."""
    t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(t.mean())
    if t.numel() == 1:
        return mean, mean, mean
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, t.numel(), (n, t.numel()), generator=g)
    means = t[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return mean, float(lo), float(hi)


def slopes(multipliers: Sequence[float], values: torch.Tensor) -> torch.Tensor:
    """Per item, the least-squares slope of ``values[item, j]`` against ``multipliers[j]`` (Tan et al.'s
    steerability): ``sum((m - mean m)(y - mean y)) / sum((m - mean m)^2)``."""
    m = torch.as_tensor(multipliers, dtype=torch.float64)
    if m.numel() < 2 or float(((m - m.mean()) ** 2).sum()) == 0:
        raise ValueError(f"steerability needs at least two different multipliers, got {list(multipliers)}")
    y = values.double()
    mc = m - m.mean()
    return ((y - y.mean(1, keepdim=True)) * mc).sum(1) / (mc ** 2).sum()


def steerability(multipliers: Sequence[float], logit_diffs: torch.Tensor) -> dict[str, float | list[float]]:
    """The steerability summary: mean and spread of the per-item slopes, the anti-steerable fraction (slope
    <= 0: steering towards the behaviour makes the item less likely to show it), and the slopes themselves."""
    s = slopes(multipliers, logit_diffs)
    return {"mean_slope": float(s.mean()), "std_slope": float(s.std()) if s.numel() > 1 else 0.0,
            "median_slope": float(s.median()), "anti_steerable_fraction": float((s <= 0).double().mean()),
            "n": int(s.numel()), "slopes": [round(float(v), 6) for v in s]}


def letter_balance(p_first: torch.Tensor, p_match_orig: torch.Tensor, p_match_swapped: torch.Tensor
                   ) -> dict[str, float | bool]:
    """Does the cell answer the question or pick a letter? With each item seen in both letter orders:

    - ``p_first``: mean probability of the first letter over both orders (0.5 for a model that follows the
      content, 1 for one that always says ``(A)``); ``letter_bias = |2 p_first - 1|``;
    - ``order_consistency``: ``1 - mean |p(match | order 1) - p(match | order 2)|`` (1: the answer's letter does
      not matter);
    - ``letter_driven``: ``letter_bias > LETTER_BIAS_WARN`` - the report warns."""
    pf = float(p_first.double().mean())
    bias = abs(2 * pf - 1)
    cons = (1 - float((p_match_orig.double() - p_match_swapped.double()).abs().mean())
            if p_match_orig.numel() else float("nan"))
    return {"p_first": pf, "letter_bias": bias, "order_consistency": cons,
            "letter_driven": bool(bias > LETTER_BIAS_WARN)}


def harmonic_mean(*scores: float) -> float:
    """AxBench's aggregate: the harmonic mean of the scores, 0 when any is 0 (or negative)."""
    if any(not math.isfinite(s) or s <= 0 for s in scores):
        return 0.0
    return len(scores) / sum(1 / s for s in scores)


def distinct_n(tokens: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams in one text (1 when it has none: nothing repeats)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def repetition(tokens: Sequence[str], n: int = 3) -> float:
    """Share of the text's n-grams that repeat an earlier one (0: no loop; near 1: the text loops)."""
    return 1.0 - distinct_n(tokens, n)


def words(text: str) -> list[str]:
    return text.lower().split()


def text_scores(text: str) -> dict[str, float]:
    """The judge-free fluency signals of one generation: distinct-1/2 and the 3-gram repetition rate (over
    lower-cased words), and its length in words."""
    w = words(text)
    return {"distinct_1": distinct_n(w, 1), "distinct_2": distinct_n(w, 2), "repetition": repetition(w, 3),
            "n_words": float(len(w))}


