"""Sparse autoencoders: activation caches, dictionaries, training (several at once, resumable, data-parallel),
metrics, overlap, top-activating contexts and feature interventions."""

from ..data.texts import read_texts
from .dictionary import ARCHITECTURES, SAEConfig, SparseAutoencoder
from .features import FeatureEdit, FeatureIntervention, decoder_cosines, overlap, top_examples
from .io import load_sae, save_sae
from .metrics import Splice, downstream_loss, reconstruction_metrics
from .store import CacheError, CacheReader, cache_activations, online_batches
from .train import TrainConfig, Trainer, TrainingDivergedError, train_saes

__all__ = [
    "ARCHITECTURES", "CacheError", "CacheReader", "FeatureEdit", "FeatureIntervention", "SAEConfig",
    "SparseAutoencoder", "Splice",
    "TrainConfig", "Trainer", "TrainingDivergedError", "cache_activations", "decoder_cosines", "downstream_loss",
    "load_sae", "online_batches", "overlap", "read_texts", "reconstruction_metrics", "save_sae", "top_examples",
    "train_saes",
]
