"""Every dataset format actlab reads, through one reader with ``file:line`` errors (:mod:`.readers`):
A/B behaviour items, contrastive pairs and instruction lists (steering), texts (SAE caches, LFP), preference
pairs (DPO) and LFP triples. Also the small datasets shipped with actlab (:func:`path`)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .behaviour import ABItem, answer_letter, load_ab
from .contrast import INSTRUCTION_KEYS, ContrastPair, load_instructions, load_pairs
from .preferences import load_preferences, split_dialogue
from .readers import DatasetError, csv_rows, fingerprint, rows, text_field
from .texts import TEXT_FIELDS, imdb_prefixes, read_texts
from .triples import load_triples


def path(name: str) -> Path:
    """Path of a packaged data file, e.g. ``path('sentiment_pairs.jsonl')``."""
    return Path(str(files(__name__).joinpath(name)))


__all__ = [
    "INSTRUCTION_KEYS", "TEXT_FIELDS", "ABItem", "ContrastPair", "DatasetError", "answer_letter", "csv_rows",
    "fingerprint", "imdb_prefixes", "load_ab", "load_instructions", "load_pairs", "load_preferences",
    "load_triples", "path", "read_texts", "rows", "split_dialogue", "text_field",
]
