"""Locations actlab reads from the environment.

- ``ACTLAB_MODELS_DIR``: one or more folders (``os.pathsep``-separated) searched by short name or hub id
  before the Hugging Face hub. CI and tests point it at ``../shared/models``.
- ``ACTLAB_DATA_DIR``: folder of datasets used by demos and tests (``../shared/data`` here).
- ``ACTLAB_CACHE_DIR``: where de-quantized GGUF weights are cached (default ``~/.cache/actlab``).
"""

from __future__ import annotations

import os
from pathlib import Path


def models_dirs() -> list[Path]:
    """Folders searched for local models, in order; missing folders are skipped."""
    raw = os.environ.get("ACTLAB_MODELS_DIR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p and Path(p).expanduser().is_dir()]


def data_dir() -> Path | None:
    """The dataset folder, or None when unset or missing."""
    raw = os.environ.get("ACTLAB_DATA_DIR", "")
    p = Path(raw).expanduser() if raw else None
    return p if p is not None and p.is_dir() else None


def cache_dir() -> Path:
    """Cache root (created on demand by the writers, not here)."""
    raw = os.environ.get("ACTLAB_CACHE_DIR", "")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "actlab"
