"""Small datasets shipped with actlab (inputs for demos; real benchmark data lives outside the package)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def path(name: str) -> Path:
    """Path of a packaged data file, e.g. ``path('sentiment_pairs.jsonl')``."""
    return Path(str(files(__name__).joinpath(name)))
