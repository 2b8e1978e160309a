"""Comparing representations: vector similarity across layers and models, normalised PCA, layer-selection
metrics, vocabulary projections and parameter divergence. Pure tensor math; plots live in actlab.report."""

from .divergence import Divergence, DivergenceError, parameter_divergence
from .layers import LayerMetrics, layer_metrics
from .pca import NORMALISATION, Projection, pca_2d
from .similarity import check_comparable, cosine, cross_model_cosine, layer_cosine_matrix
from .vocab import direction_dots, vocab_projection, vocab_view

__all__ = [
    "NORMALISATION", "Divergence", "DivergenceError", "LayerMetrics", "Projection", "check_comparable", "cosine",
    "cross_model_cosine", "direction_dots", "layer_cosine_matrix", "layer_metrics", "parameter_divergence",
    "pca_2d", "vocab_projection", "vocab_view",
]
