"""The methods an evaluation compares (one class per file; register it here)."""

from __future__ import annotations

from .ablation import Ablation
from .base import VARIANTS, Cell, Method
from .files import FromFile
from .prompting import FewShot, Prompt
from .rotation import Rotation
from .sae import SAEFeatures
from .vectors import PCA, MeanDiff, Probe, PromptAndVector

METHODS: dict[str, type[Method]] = {m.name: m for m in (
    Prompt, FewShot, MeanDiff, PCA, Probe, Rotation, SAEFeatures, Ablation, PromptAndVector, FromFile)}

__all__ = ["METHODS", "VARIANTS", "Cell", "Method"]
