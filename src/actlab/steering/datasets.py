"""Dataset loaders for steering, kept as a module name: they live in :mod:`actlab.data` (one reader with
``file:line`` errors for every format)."""

from ..data.behaviour import ABItem, answer_letter, load_ab
from ..data.contrast import INSTRUCTION_KEYS, ContrastPair, load_instructions, load_pairs
from ..data.readers import DatasetError, fingerprint

__all__ = ["INSTRUCTION_KEYS", "ABItem", "ContrastPair", "DatasetError", "answer_letter", "fingerprint", "load_ab",
           "load_instructions", "load_pairs"]
