"""actlab: an activation-engineering workbench for Hugging Face causal language models."""

import importlib
from typing import Any

from .errors import ActlabError
from .hooks import Activations, HookPoint, HookSession, count_hooks
from .hooks.interventions import Add, Edits, Intervention, ProjectOut, Replace
from .lens import LensResult, Unembed, logit_lens
from .models import ArchAdapter, Model, load_model, register_adapter
from .runs import Run
from .version import __version__

wrap = Model.wrap

# Loaded on first use (``actlab.jobs``, ``actlab.Steer``...), so ``import actlab`` stays light.
_LAZY = {"Steer": "actlab.steering.apply", "Mix": "actlab.steering.apply", "FeatureEdit": "actlab.sae.features"}
_SUBMODULES = ("analysis", "data", "finetune", "jobs", "lfp", "report", "sae", "steering")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"actlab.{name}")
    raise AttributeError(f"module 'actlab' has no attribute {name!r}")


__all__ = [
    "Activations",
    "ActlabError",
    "Add",
    "ArchAdapter",
    "Edits",
    "FeatureEdit",
    "HookPoint",
    "HookSession",
    "Intervention",
    "LensResult",
    "Mix",
    "Model",
    "ProjectOut",
    "Replace",
    "Run",
    "Steer",
    "Unembed",
    "__version__",
    "count_hooks",
    "load_model",
    "logit_lens",
    "register_adapter",
    "wrap",
]
