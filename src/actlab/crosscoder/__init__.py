"""Crosscoders: one dictionary over a base and a fine-tuned model's activations, to see what fine-tuning added,
removed or changed (BatchTopK and L1 training through the SAE trainer, relative decoder norms, latent
scaling). Names load on first use."""

import importlib
from typing import Any

_LAZY = {
    "ARCHITECTURES": ".model", "Crosscoder": ".model", "CrosscoderConfig": ".model",
    "CLASSES": ".analysis", "Thresholds": ".analysis", "analyse": ".analysis", "classify": ".analysis",
    "decoder_cosines": ".analysis", "evaluate": ".analysis", "latent_scaling": ".analysis",
    "relative_norm_difference": ".analysis", "scaling_beta": ".analysis",
    "PairedReader": ".data", "load_crosscoder": ".io", "save_crosscoder": ".io",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
