"""Explaining a latent and scoring the explanation with an LLM (any OpenAI-compatible endpoint, through
:class:`actlab.llm.Asker`: concurrency, retries, disk cache keyed by the model and the prompt).

- **Explain**: top-activating and quantile-sampled contexts with the active tokens marked ``<<like this>>``;
  the reply's ``Explanation:`` line is the explanation.
- **Detection** (Paulo et al. 2024, "Automatically interpreting millions of features in LLMs", the delphi
  library): activating contexts (top and quantile-sampled) mixed with random contexts where the latent is silent;
  the scorer, given only the explanation, says for each context whether the latent is active in it.
- **Fuzzing** (same source): activating contexts with the truly active tokens marked, or the same number of
  other tokens of the window marked; the scorer says whether the marking fits the explanation.

Several contexts go in one request (``per_request``); the reply must be a list of exactly that many 0/1
numbers. A reply that is not (wrong length, unparseable, empty) counts as a failure: every context in it
is scored as answered wrongly, never skipped, and the failures are counted. Per latent: balanced accuracy,
F1, precision, recall and the confusion counts.

With an asker that requests log-probabilities (``endpoint_asker(..., top_logprobs=K)``) each answer also has a
probability, P("1") / (P("1") + P("0")) read at the token of that list item, and the latent gets the **AUC** of
those probabilities (delphi's log-prob scoring); a failed reply gives its items the wrong answer with
certainty. A server that returns no log-probabilities leaves ``auc`` None.

- **Simulation** (Bills et al. 2023, "Language models can explain neurons in language models"): the scorer
  reads the explanation and a context's tokens, one per line, and predicts each token's activation on a 0-9
  scale; with log-probabilities the prediction is the expected value over the digits at that position (Bills'
  "all at once" simulator), without them the digit it wrote. The score is the Pearson correlation between the
  predictions and the true activations over every token of the activating and silent contexts (Bills'
  "all" score; the scale does not matter to a correlation). A failed reply predicts 0 for its context.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..llm import Asker, decode_reply
from .examples import Example, LatentExamples

EXPLAIN = ("You explain features of a language model. In each text snippet below, the tokens where the feature "
           "is active are marked <<like this>>. In one short sentence, say what the feature detects. Reply with "
           "one line: 'Explanation: <sentence>'.")
DETECTION = ("A feature of a language model is explained as: {explanation}\nBelow are {n} numbered text snippets. "
             "For each, say whether the feature is active anywhere in it. Reply with a list of {n} numbers, 1 "
             "(active) or 0 (not active), like [1, 0, 1], and nothing else.")
FUZZING = ("A feature of a language model is explained as: {explanation}\nIn each of the {n} numbered text "
           "snippets below some tokens are marked <<like this>>. For each, say whether the marked tokens are ones "
           "this feature is active on (1) or not (0). Reply with a list of {n} numbers, like [1, 0, 1], and "
           "nothing else.")
SIMULATION = ("A feature of a language model is explained as: {explanation}\nBelow are the {n} tokens of a text, "
              "one per line with its position. Predict how strongly the feature is active on each token, from 0 "
              "(not at all) to 9 (most strongly). Reply with a list of {n} digits, like [0, 0, 7, 0], and "
              "nothing else.")


def mark(tokens: Sequence[str], marked: Sequence[int]) -> str:
    """The window as text with the tokens at ``marked`` wrapped in ``<< >>`` (leading spaces left outside)."""
    on = set(marked)
    parts = []
    for i, t in enumerate(tokens):
        if i in on and t.strip():
            lead = t[:len(t) - len(t.lstrip())]
            parts.append(f"{lead}<<{t.strip()}>>")
        else:
            parts.append(t)
    return "".join(parts).strip()


def numbered(snippets: Sequence[str]) -> str:
    return "\n".join(f"Snippet {i}: {s}" for i, s in enumerate(snippets, 1))


def parse_list(reply: str, n: int) -> list[int] | None:
    """The reply's last ``[...]`` as ``n`` numbers each 0 or 1; None when it is not exactly that."""
    found = re.findall(r"\[([^\[\]]*)\]", reply or "")
    if not found:
        return None
    items = [x.strip() for x in found[-1].split(",")]
    if len(items) != n or any(x not in ("0", "1") for x in items):
        return None
    return [int(x) for x in items]


def parse_explanation(reply: str) -> str:
    m = re.search(r"Explanation:\s*(.+)", reply or "", re.I)
    line = m.group(1) if m else next((ln for ln in (reply or "").splitlines() if ln.strip()), "")
    return line.strip()


def explain(asker: Asker, ex: LatentExamples, *, n_contexts: int = 10) -> tuple[str, str]:
    """(explanation, raw reply) from the top and quantile contexts of one latent."""
    shown = (ex.top[: n_contexts // 2 or 1] + ex.quantile)[:n_contexts]
    msgs = [{"role": "system", "content": EXPLAIN},
            {"role": "user", "content": numbered([mark(e.tokens, e.active) for e in shown])}]
    reply, _ = asker.ask(msgs)
    return parse_explanation(reply), reply


@dataclass
class Score:
    """Confusion counts of one scoring method on one latent, and the replies that failed to parse."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    failed_replies: int = 0
    failed_items: int = 0
    requests: int = 0
    truths: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)  # P(1) per item, when every reply had log-probabilities
    with_logprobs: bool = True

    def add(self, truth: Sequence[int], pred: Sequence[int], probs: Sequence[float] | None = None) -> None:
        for t, p in zip(truth, pred, strict=True):
            self.tp += t and p
            self.fn += t and not p
            self.fp += p and not t
            self.tn += not t and not p
        self.truths += list(truth)
        if probs is None:
            self.with_logprobs = False
        else:
            self.probs += list(probs)

    def auc(self) -> float | None:
        """Area under the ROC curve of the answers' probabilities (None without log-probabilities or when
        one class is missing)."""
        if not self.with_logprobs or not self.probs or len(set(self.truths)) < 2:
            return None
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(self.truths, self.probs))

    def record(self) -> dict[str, Any]:
        pos, neg = self.tp + self.fn, self.tn + self.fp
        tpr = self.tp / pos if pos else None
        tnr = self.tn / neg if neg else None
        prec = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        f1 = 2 * prec * tpr / (prec + tpr) if tpr is not None and prec + tpr > 0 else 0.0
        # None when one side is missing (a latent active in every window has no silent context to detect against)
        ba = (tpr + tnr) / 2 if tpr is not None and tnr is not None else None
        return {"balanced_accuracy": ba, "f1": f1, "precision": prec, "recall": tpr, "auc": self.auc(),
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn, "n": pos + neg,
                "failed_replies": self.failed_replies, "failed_items": self.failed_items, "requests": self.requests}


def _score(asker: Asker, template: str, explanation: str, items: list[tuple[str, int]], per_request: int,
           seed: int) -> Score:
    random.Random(seed).shuffle(items)
    chunks = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    many = [[{"role": "system", "content": template.format(explanation=explanation, n=len(c))},
             {"role": "user", "content": numbered([s for s, _ in c])}] for c in chunks]
    score = Score(requests=len(many))
    for chunk, (text, _) in zip(chunks, asker.ask_all(many), strict=True):
        reply = decode_reply(text)
        truth = [t for _, t in chunk]
        pred = parse_list(reply.content, len(chunk))
        if pred is None:  # a failure: every context in it answered wrongly, with certainty
            score.failed_replies += 1
            score.failed_items += len(chunk)
            pred = [1 - t for t in truth]
            score.add(truth, pred, None if reply.tokens is None else [float(p) for p in pred])
        else:
            score.add(truth, pred, item_probs(reply.tokens, pred, list(range(2))))
    return score


def _item_steps(tokens: list[tuple[str, dict[str, float]]], n: int) -> list[tuple[str, dict[str, float]]] | None:
    """The generated tokens (with their alternatives) that wrote the reply's last ``n`` list items (single
    digits), found as the last ``n`` one-digit tokens; None when fewer than ``n`` exist."""
    steps = [(tok.strip(), top) for tok, top in tokens if tok.strip().isdigit() and len(tok.strip()) == 1]
    return steps[-n:] if len(steps) >= n else None


def _digit_probs(top: dict[str, float], digits: Sequence[int]) -> list[float] | None:
    """P(digit) over ``digits`` at one position, renormalised over the digits among the alternatives."""
    ps = [sum(math.exp(lp) for t, lp in top.items() if t.strip() == str(d)) for d in digits]
    total = sum(ps)
    return [p / total for p in ps] if total > 0 else None


def item_probs(tokens: list[tuple[str, dict[str, float]]] | None, pred: Sequence[int],
               digits: Sequence[int]) -> list[float] | None:
    """Per list item the probability of "1" (``digits`` 0, 1) or the expected digit (0-9), from the log-
    probabilities at the token that wrote it; None without log-probabilities. An item whose token does not
    match the parsed answer, or whose alternatives hold no digit, keeps its parsed value."""
    if tokens is None:
        return None
    steps = _item_steps(tokens, len(pred))
    out: list[float] = []
    for i, p in enumerate(pred):
        dist = _digit_probs(steps[i][1], digits) if steps is not None and steps[i][0] == str(p) else None
        out.append(float(p) if dist is None else (dist[1] if len(digits) == 2 else
                                                   sum(d * q for d, q in zip(digits, dist, strict=True))))
    return out


def detection(asker: Asker, explanation: str, ex: LatentExamples, *, per_request: int = 5,
              seed: int = 0) -> dict[str, Any]:
    """Detection score of ``explanation`` on the latent's activating (top + quantile) and silent contexts."""
    items = [(mark(e.tokens, []), 1) for e in ex.top + ex.quantile] + [(mark(e.tokens, []), 0) for e in ex.negative]
    return _score(asker, DETECTION, explanation, items, per_request, seed).record()


def _wrong_marks(e: Example, rng: random.Random) -> list[int] | None:
    others = [i for i, a in enumerate(e.acts) if a <= 0 and e.tokens[i].strip()]
    k = len(e.active)
    return sorted(rng.sample(others, k)) if 0 < k <= len(others) else None


def fuzzing(asker: Asker, explanation: str, ex: LatentExamples, *, per_request: int = 5,
            seed: int = 0) -> dict[str, Any]:
    """Fuzzing score: each activating context once with its active tokens marked (1) and once with as many
    other tokens marked (0)."""
    rng = random.Random(seed)
    items: list[tuple[str, int]] = []
    for e in ex.top + ex.quantile:
        wrong = _wrong_marks(e, rng)
        if wrong is None:
            continue
        items += [(mark(e.tokens, e.active), 1), (mark(e.tokens, wrong), 0)]
    return _score(asker, FUZZING, explanation, items, per_request, seed + 1).record()


def parse_digits(reply: str, n: int) -> list[int] | None:
    """The reply's last ``[...]`` as ``n`` digits 0-9; None when it is not exactly that."""
    found = re.findall(r"\[([^\[\]]*)\]", reply or "")
    if not found:
        return None
    items = [x.strip() for x in found[-1].split(",")]
    if len(items) != n or any(len(x) != 1 or not x.isdigit() for x in items):
        return None
    return [int(x) for x in items]


def simulation(asker: Asker, explanation: str, ex: LatentExamples, *, n_negative: int | None = None,
               ) -> dict[str, Any]:
    """Simulation score (Bills et al. 2023): Pearson correlation of the scorer's predicted activations with the
    true ones over every token of the activating (top + quantile) and ``n_negative`` silent contexts (default:
    as many silent as activating). One request per context."""
    shown = ex.top + ex.quantile
    shown += ex.negative[: len(shown) if n_negative is None else n_negative]
    many = [[{"role": "system", "content": SIMULATION.format(explanation=explanation, n=len(e.tokens))},
             {"role": "user", "content": "\n".join(f"{i}\t{json.dumps(t)}" for i, t in enumerate(e.tokens, 1))}]
            for e in shown]
    true: list[float] = []
    sim: list[float] = []
    failed, expected = 0, True
    for e, (text, _) in zip(shown, asker.ask_all(many), strict=True):
        reply = decode_reply(text)
        pred = parse_digits(reply.content, len(e.tokens))
        if pred is None:
            failed += 1
            pred = [0] * len(e.tokens)
            probs = None
        else:
            probs = item_probs(reply.tokens, pred, list(range(10)))
        expected = expected and probs is not None
        sim += [float(x) for x in (probs if probs is not None else pred)]
        true += [float(a) for a in e.acts]
    return {"correlation": _pearson(true, sim), "n_tokens": len(true), "n_contexts": len(shown),
            "failed_replies": failed, "expected_value": expected, "requests": len(many)}


def _pearson(x: list[float], y: list[float]) -> float | None:
    """Pearson correlation; None when either side is constant (a scorer that predicts one value says nothing)."""
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None
