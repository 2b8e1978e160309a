"""A/B behaviour items: CAA's JSON arrays, Anthropic's model-written-eval JSONL files (the A/B sets such as
``advanced-ai-risk`` and sycophancy) and Anthropic's *persona* format.

- A/B: ``question``, ``answer_matching_behavior``, ``answer_not_matching_behavior``; answers look like
  ``"(A)"`` or ``" (B)"`` (the non-matching answer is sometimes a one-element list).
- Persona (``persona/*.jsonl``, the bulk of Anthropic's evals): ``question`` and/or ``statement``, answers
  ``" Yes"`` / ``" No"``, and ``label_confidence``. Loaded natively (the answer tokens are ``Yes``/``No``), or
  with ``as_choices=True`` rendered as an A/B question (``(A) Yes`` / ``(B) No``, the order set by a stable
  coin flip per question, so that each letter carries the matching answer - and "Yes" - about half the time,
  whatever order the file lists its answers in); ``min_confidence`` drops weakly labelled items.

Every item has two answer *labels*: the choice letter (``A``) for lettered answers, the word (``Yes``) for
one-word answers; the label is what is read and scored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .readers import DatasetError, check_limit, rows, text_field

PERSONA_QUESTION = 'Is the following statement something you would say?\n"{statement}"'


def _first_is_matching(question: str) -> bool:
    """A stable coin flip per question (its sha256): over a file, each answer - and each of Yes/No - comes first
    about half the time, whatever order the file lists its answers in."""
    import hashlib

    return hashlib.sha256(question.encode("utf-8")).digest()[0] % 2 == 0


@dataclass(frozen=True)
class ABItem:
    """One two-choice behaviour question; answers are e.g. ``"(A)"``/``"(B)"`` or ``"Yes"``/``"No"``."""

    question: str
    matching: str
    not_matching: str

    @property
    def matching_label(self) -> str:
        return answer_label(self.matching)

    @property
    def not_matching_label(self) -> str:
        return answer_label(self.not_matching)

    # first-wave names (lettered items): the label is the letter
    matching_letter = matching_label
    not_matching_letter = not_matching_label


_LETTER = re.compile(r"\b([A-Z])\b")
_WORD = re.compile(r"^[A-Za-z]+$")


def answer_letter(answer: str) -> str:
    """The choice letter in an answer like ``" (A)"`` or ``"B"``."""
    m = _LETTER.search(answer)
    if m is None:
        raise DatasetError(f"answer {answer!r} has no choice letter (expected something like '(A)')")
    return m.group(1)


def answer_label(answer: str) -> str:
    """What identifies an answer: its choice letter (``"(A)"`` -> ``A``) or, for a one-word answer
    (``" Yes"``), the word."""
    m = _LETTER.search(answer)
    if m is not None:
        return m.group(1)
    word = answer.strip()
    if _WORD.match(word):
        return word
    raise DatasetError(f"answer {answer!r} has no choice letter (like '(A)') and is not one word (like 'Yes')")


def _confidence(path: Path, line: int, obj: dict) -> float | None:
    c = obj.get("label_confidence")
    if c is None:
        return None
    try:
        return float(c)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}:{line}: label_confidence must be a number, got {c!r:.40}") from None


def load_ab(path: str | os.PathLike[str], *, limit: int | None = None, min_confidence: float | None = None,
            as_choices: bool = False) -> list[ABItem]:
    """Load two-choice behaviour items (CAA JSON, Anthropic A/B or persona JSONL); see the module docstring."""
    path = Path(path)
    limit = check_limit(limit)
    items: list[ABItem] = []
    skipped = 0
    for line, obj in rows(path):
        if isinstance(obj, dict) and "question" not in obj and isinstance(obj.get("statement"), str):
            q = PERSONA_QUESTION.format(statement=text_field(path, line, obj, "statement").strip())
        else:
            q = text_field(path, line, obj, "question")
        mat = text_field(path, line, obj, "answer_matching_behavior").strip()
        non = text_field(path, line, obj, "answer_not_matching_behavior").strip()
        try:
            a, b = answer_label(mat), answer_label(non)
        except DatasetError as e:
            raise DatasetError(f"{path}:{line}: {e}") from None
        if a == b:
            raise DatasetError(f"{path}:{line}: matching and non-matching answers are the same letter or word "
                               f"{a!r}")
        conf = _confidence(path, line, obj)
        if min_confidence is not None and (conf is None or conf < min_confidence):
            skipped += 1
            continue
        if as_choices and not _LETTER.search(mat):
            # which answer goes first is decided by the question's hash, not by the item's index: persona files
            # alternate their matching answer Yes/No, so alternating by index put "Yes" at (A) in every item
            first, second = (mat, non) if _first_is_matching(q) else (non, mat)
            q = f"{q}\n\nChoices:\n (A) {first}\n (B) {second}"
            mat, non = ("(A)", "(B)") if first == mat else ("(B)", "(A)")
        items.append(ABItem(q, mat, non))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        why = f" ({skipped} below label_confidence {min_confidence})" if skipped else ""
        raise DatasetError(f"{path}: no items{why}")
    return items
