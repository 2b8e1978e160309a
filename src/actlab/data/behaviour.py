"""A/B behaviour items: CAA's JSON arrays and Anthropic's model-written-eval JSONL files.

Each row has ``question``, ``answer_matching_behavior`` and ``answer_not_matching_behavior``; answers look
like ``"(A)"`` or ``" (B)"`` (the non-matching answer is sometimes a one-element list).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .readers import DatasetError, check_limit, rows, text_field


@dataclass(frozen=True)
class ABItem:
    """One multiple-choice behaviour question; answers are e.g. ``"(A)"`` and ``"(B)"``."""

    question: str
    matching: str
    not_matching: str

    @property
    def matching_letter(self) -> str:
        return answer_letter(self.matching)

    @property
    def not_matching_letter(self) -> str:
        return answer_letter(self.not_matching)


_LETTER = re.compile(r"\b([A-Z])\b")


def answer_letter(answer: str) -> str:
    """The choice letter in an answer like ``" (A)"`` or ``"B"``."""
    m = _LETTER.search(answer)
    if m is None:
        raise DatasetError(f"answer {answer!r} has no choice letter (expected something like '(A)')")
    return m.group(1)


def load_ab(path: str | os.PathLike[str], *, limit: int | None = None) -> list[ABItem]:
    """Load A/B behaviour items (CAA JSON or Anthropic JSONL)."""
    path = Path(path)
    limit = check_limit(limit)
    items: list[ABItem] = []
    for line, obj in rows(path):
        q = text_field(path, line, obj, "question")
        mat = text_field(path, line, obj, "answer_matching_behavior").strip()
        non = text_field(path, line, obj, "answer_not_matching_behavior").strip()
        try:
            a, b = answer_letter(mat), answer_letter(non)
        except DatasetError as e:
            raise DatasetError(f"{path}:{line}: {e}") from None
        if a == b:
            raise DatasetError(f"{path}:{line}: matching and non-matching answers are the same letter {a!r}")
        items.append(ABItem(q, mat, non))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise DatasetError(f"{path}: no items")
    return items
