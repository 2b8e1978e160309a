"""Sparse autoencoders: activation caches, dictionaries, training (several at once, resumable, data-parallel),
metrics, overlap, top-activating contexts and feature interventions. Names load on first use."""

import importlib
from typing import Any

_LAZY = {
    "read_texts": "actlab.data.texts",
    "ARCHITECTURES": ".dictionary", "SAEConfig": ".dictionary", "SparseAutoencoder": ".dictionary",
    "FeatureEdit": ".features", "decoder_cosines": ".features",
    "overlap": ".features", "top_examples": ".features",
    "load_sae": ".io", "save_sae": ".io",
    "downstream_loss": ".metrics", "reconstruction_metrics": ".metrics",
    "CacheError": ".store", "CacheReader": ".store", "cache_activations": ".store", "online_batches": ".store",
    "TrainConfig": ".config", "Trainer": ".train", "TrainingDivergedError": ".train", "train_saes": ".train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod = _LAZY[name]
        return getattr(importlib.import_module(mod, __name__) if mod.startswith(".") else importlib.import_module(mod),
                       name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
