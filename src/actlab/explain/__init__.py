"""Feature explanations written and scored by an LLM: contexts of a latent (:mod:`.examples`), an explanation
from them, and its detection and fuzzing scores (:mod:`.scoring`). Works for SAE, crosscoder and transcoder
latents alike (anything :func:`actlab.sae.features.scan_codes` reads)."""

from .examples import Example, LatentExamples, collect
from .scoring import Score, detection, explain, fuzzing, mark, parse_list, simulation

__all__ = ["Example", "LatentExamples", "Score", "collect", "detection", "explain", "fuzzing", "mark",
           "parse_list", "simulation"]
