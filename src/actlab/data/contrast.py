"""Contrastive data for steering: ``{"positive", "negative"}`` text pairs and instruction lists.

- Pairs: JSONL (or a JSON array) of ``{"positive", "negative"}`` texts.
- Instruction lists: a JSON array of strings or of objects with ``instruction`` (or ``goal``, ``prompt``,
  ``text``, ``question``); or a CSV with one of those columns (e.g. AdvBench's ``goal``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .readers import DatasetError, check_limit, csv_rows, first_field, rows, text_field


@dataclass(frozen=True)
class ContrastPair:
    """A positive and a negative text differing in the concept of interest."""

    positive: str
    negative: str


def load_pairs(path: str | os.PathLike[str], *, limit: int | None = None) -> list[ContrastPair]:
    """Load contrastive ``{"positive", "negative"}`` pairs (JSONL or JSON array)."""
    path = Path(path)
    limit = check_limit(limit)
    pairs = []
    for line, obj in rows(path):
        pairs.append(ContrastPair(text_field(path, line, obj, "positive"), text_field(path, line, obj, "negative")))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise DatasetError(f"{path}: no pairs")
    return pairs


INSTRUCTION_KEYS = ("instruction", "goal", "prompt", "text", "question")


def load_instructions(path: str | os.PathLike[str], *, field: str | None = None, limit: int | None = None
                      ) -> list[str]:
    """Load a list of instructions from JSON (strings or objects) or CSV (a named column)."""
    path = Path(path)
    limit = check_limit(limit)
    keys = (field,) if field else INSTRUCTION_KEYS
    out: list[str] = []
    if path.suffix.lower() == ".csv":
        for line, key, row in csv_rows(path, keys):
            val = (row.get(key) or "").strip()
            if not val:
                raise DatasetError(f"{path}:{line}: empty {key!r}")
            out.append(val)
            if limit is not None and len(out) >= limit:
                break
    else:
        for line, obj in rows(path):
            if isinstance(obj, dict) and not any(k in obj for k in keys):
                out.append(text_field(path, line, obj, keys[0]))  # names the missing field
            else:
                out.append(first_field(path, line, obj, keys))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DatasetError(f"{path}: no instructions")
    return out
