"""Steering: datasets and prompts, vector extraction, applying vectors, mixing, directional ablation,
the refusal-direction pipeline and behaviour evaluation."""

from ..data import ABItem, ContrastPair, DatasetError, load_ab, load_instructions, load_pairs
from .ablation import ablate, orthogonalize
from .apply import APPLY_POLICIES, Mix, Steer, add_vectors, mix, record_activation, steer
from .extraction import METHODS, ContrastSet, contrast_from_ab, contrast_from_instructions, contrast_from_pairs, extract
from .prompts import PromptStyle, format_prompt, resolve_style
from .vector import SteeringVector, VectorMismatchError

__all__ = [
    "APPLY_POLICIES", "METHODS", "ABItem", "ContrastPair", "ContrastSet", "DatasetError", "Mix",
    "PromptStyle", "Steer", "SteeringVector", "VectorMismatchError", "ablate",
    "add_vectors", "contrast_from_ab", "contrast_from_instructions", "contrast_from_pairs", "extract",
    "format_prompt", "load_ab", "load_instructions", "load_pairs", "mix", "orthogonalize", "record_activation",
    "resolve_style", "steer",
]
