"""LFP contrastive triples given as a file: JSONL rows ``{"positive", "neutral", "negative"}`` (whole-input
deltas; the sentiment task builds its triples from a lexicon instead, see ``actlab.lfp.triples``)."""

from __future__ import annotations

import os
from typing import Any

from .readers import DatasetError, rows

TRIPLE_KEYS = ("positive", "neutral", "negative")


def load_triples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """``[{kind: {"text", "span": None}}]`` for kind in positive, neutral, negative."""
    out = []
    for n, obj in rows(path, what="triples file"):
        missing = [k for k in TRIPLE_KEYS if not isinstance(obj, dict) or not isinstance(obj.get(k), str)]
        if missing:
            raise DatasetError(f"{path}:{n}: missing {', '.join(missing)}")
        out.append({k: {"text": obj[k], "span": None} for k in TRIPLE_KEYS})
    if not out:
        raise DatasetError(f"{path}: no triples")
    return out
