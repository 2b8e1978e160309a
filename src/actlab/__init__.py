"""actlab: an activation-engineering workbench for Hugging Face causal language models."""

__version__ = "0.1.0"

from .errors import ActlabError
from .hooks import Activations, HookPoint, HookSession, count_hooks
from .lens import LensResult, Unembed, logit_lens
from .models import ArchAdapter, Model, load_model, register_adapter

wrap = Model.wrap

__all__ = [
    "Activations",
    "ActlabError",
    "ArchAdapter",
    "HookPoint",
    "HookSession",
    "LensResult",
    "Model",
    "Unembed",
    "__version__",
    "count_hooks",
    "load_model",
    "logit_lens",
    "register_adapter",
    "wrap",
]
