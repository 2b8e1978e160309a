"""Dataset loaders for steering: A/B behaviour items, contrastive pairs, instruction lists.

Formats (real copies of each are in ``../shared/data``):

- A/B items, CAA format: a JSON array of ``{"question", "answer_matching_behavior",
  "answer_not_matching_behavior"}``; Anthropic model-written evals: the same keys, one object per line
  (JSONL), answers with a leading space (``" (A)"``) and sometimes the non-matching answer as a list.
- Contrastive pairs: JSONL (or a JSON array) of ``{"positive", "negative"}`` texts.
- Instruction lists: a JSON array of strings or of objects with ``instruction`` (or ``goal``, ``prompt``,
  ``text``); or a CSV with one of those columns (e.g. AdvBench's ``goal``).

A malformed row is reported with the file and line it starts on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ActlabError


class DatasetError(ActlabError):
    """A dataset file is missing, unparsable, or has a malformed row (named by file and line)."""


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


@dataclass(frozen=True)
class ContrastPair:
    """A positive and a negative text differing in the concept of interest."""

    positive: str
    negative: str


_LETTER = re.compile(r"\b([A-Z])\b")


def answer_letter(answer: str) -> str:
    """The choice letter in an answer like ``" (A)"`` or ``"B"``."""
    m = _LETTER.search(answer)
    if m is None:
        raise DatasetError(f"answer {answer!r} has no choice letter (expected something like '(A)')")
    return m.group(1)


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every row of a JSON array or a JSONL file."""
    if not path.is_file():
        raise DatasetError(f"dataset file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise DatasetError(f"{path}: the file is empty")
    if stripped[0] == "[":
        yield from _json_array_rows(path, text)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    n_items = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise DatasetError(f"{path}:{text.count(chr(10), 0, pos) + 1}: the JSON array is not closed")
        if text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        n_items += 1
        yield line, obj
        pos = end


def _text_field(path: Path, line: int, obj: Any, key: str) -> str:
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}:{line}: expected an object with {key!r}, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(f"{path}:{line}: missing field {key!r} (fields: {', '.join(map(str, obj)) or 'none'})")
    val = obj[key]
    if isinstance(val, list) and len(val) == 1:
        val = val[0]
    if not isinstance(val, str) or not val.strip():
        raise DatasetError(f"{path}:{line}: field {key!r} must be a non-empty string, got {val!r:.60}")
    return val


def load_ab(path: str | os.PathLike[str], *, limit: int | None = None) -> list[ABItem]:
    """Load A/B behaviour items (CAA JSON or Anthropic JSONL)."""
    path = Path(path)
    items: list[ABItem] = []
    for line, obj in _rows(path):
        q = _text_field(path, line, obj, "question")
        mat = _text_field(path, line, obj, "answer_matching_behavior").strip()
        non = _text_field(path, line, obj, "answer_not_matching_behavior").strip()
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


def load_pairs(path: str | os.PathLike[str], *, limit: int | None = None) -> list[ContrastPair]:
    """Load contrastive ``{"positive", "negative"}`` pairs (JSONL or JSON array)."""
    path = Path(path)
    pairs = []
    for line, obj in _rows(path):
        pairs.append(ContrastPair(_text_field(path, line, obj, "positive"), _text_field(path, line, obj, "negative")))
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
    keys = (field,) if field else INSTRUCTION_KEYS
    out: list[str] = []
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise DatasetError(f"dataset file {str(path)!r} does not exist")
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            key = next((k for k in keys if k in cols), None)
            if key is None:
                raise DatasetError(f"{path}:1: no column named {' or '.join(keys)} (columns: {', '.join(cols)})")
            for row in reader:
                val = (row.get(key) or "").strip()
                if not val:
                    raise DatasetError(f"{path}:{reader.line_num}: empty {key!r}")
                out.append(val)
                if limit is not None and len(out) >= limit:
                    break
    else:
        for line, obj in _rows(path):
            if isinstance(obj, str):
                if not obj.strip():
                    raise DatasetError(f"{path}:{line}: empty instruction")
                out.append(obj)
            else:
                key = next((k for k in keys if isinstance(obj, dict) and k in obj), keys[0])
                out.append(_text_field(path, line, obj, key))
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise DatasetError(f"{path}: no instructions")
    return out


def fingerprint(items: Iterable[Any]) -> str:
    """sha256 of the items' canonical JSON: identifies the exact data a vector was extracted from."""
    h = hashlib.sha256()
    for it in items:
        obj = asdict(it) if hasattr(it, "__dataclass_fields__") else it
        h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
