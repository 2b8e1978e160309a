"""Model loading, architecture adapters and the :class:`Model` wrapper."""

from .adapters import ADAPTERS, ArchAdapter, get_adapter, register_adapter, supported_families
from .loading import find_local, load_model, local_models
from .model import Model, position_ids_from_mask
from .validate import validate_model

__all__ = [
    "ADAPTERS", "ArchAdapter", "Model", "find_local", "get_adapter", "load_model", "local_models",
    "position_ids_from_mask", "register_adapter", "supported_families", "validate_model",
]
