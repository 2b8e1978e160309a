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
F1, precision, recall and the confusion counts. Not built: AUC and simulation scoring (Bills et al. 2023)
need token log-probabilities, which the chat client does not request.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..llm import Asker
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

    def add(self, truth: Sequence[int], pred: Sequence[int]) -> None:
        for t, p in zip(truth, pred, strict=True):
            self.tp += t and p
            self.fn += t and not p
            self.fp += p and not t
            self.tn += not t and not p

    def record(self) -> dict[str, Any]:
        pos, neg = self.tp + self.fn, self.tn + self.fp
        tpr = self.tp / pos if pos else None
        tnr = self.tn / neg if neg else None
        prec = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        f1 = 2 * prec * tpr / (prec + tpr) if tpr is not None and prec + tpr > 0 else 0.0
        # None when one side is missing (a latent active in every window has no silent context to detect against)
        ba = (tpr + tnr) / 2 if tpr is not None and tnr is not None else None
        return {"balanced_accuracy": ba, "f1": f1, "precision": prec, "recall": tpr,
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn, "n": pos + neg,
                "failed_replies": self.failed_replies, "failed_items": self.failed_items, "requests": self.requests}


def _score(asker: Asker, template: str, explanation: str, items: list[tuple[str, int]], per_request: int,
           seed: int) -> Score:
    random.Random(seed).shuffle(items)
    chunks = [items[i:i + per_request] for i in range(0, len(items), per_request)]
    many = [[{"role": "system", "content": template.format(explanation=explanation, n=len(c))},
             {"role": "user", "content": numbered([s for s, _ in c])}] for c in chunks]
    score = Score(requests=len(many))
    for chunk, (reply, _) in zip(chunks, asker.ask_all(many), strict=True):
        truth = [t for _, t in chunk]
        pred = parse_list(reply, len(chunk))
        if pred is None:  # a failure: every context in it answered wrongly
            score.failed_replies += 1
            score.failed_items += len(chunk)
            pred = [1 - t for t in truth]
        score.add(truth, pred)
    return score


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
