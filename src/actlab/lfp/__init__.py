"""The Learned-Feedback-Patterns pipeline: divergence, dictionaries, triples, deltas, probes, agreement,
feature validation and the report."""

from .config import PRESETS, LFPConfig, load_config
from .pipeline import STAGES, run_pipeline, run_stage

__all__ = ["PRESETS", "STAGES", "LFPConfig", "load_config", "run_pipeline", "run_stage"]
