"""The Learned-Feedback-Patterns pipeline: divergence, dictionaries, triples, deltas, probes, agreement,
feature validation and the report. Names load on first use (the CLI imports this package to list stages)."""

import importlib
from typing import Any

from .stages import STAGES

_LAZY = {"PRESETS": "config", "LFPConfig": "config", "load_config": "config", "run_pipeline": "pipeline",
         "run_stage": "pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "STAGES", "LFPConfig", "load_config", "run_pipeline", "run_stage"]
