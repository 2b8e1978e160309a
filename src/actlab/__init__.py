"""actlab: an activation-engineering workbench for Hugging Face causal language models.

Every public name loads on first use, so ``import actlab`` (and the CLI's ``--help``) does not import torch
until something needs it.
"""

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

_LAZY = {
    "ActlabError": "actlab.errors",
    "Activations": "actlab.hooks.capture", "HookPoint": "actlab.hooks.points", "HookSession": "actlab.hooks.core",
    "count_hooks": "actlab.hooks.core",
    "Add": "actlab.hooks.additions", "Edits": "actlab.hooks.interventions",
    "Intervention": "actlab.hooks.interventions", "ProjectOut": "actlab.hooks.directions",
    "Replace": "actlab.hooks.interventions", "Rotate": "actlab.hooks.directions",
    "Hook": "actlab.hooks.interventions", "Boundary": "actlab.hooks.positions",
    "LensResult": "actlab.lens", "Unembed": "actlab.models.unembed", "logit_lens": "actlab.lens",
    "ArchAdapter": "actlab.models.adapters", "register_adapter": "actlab.models.adapters",
    "Model": "actlab.models.model", "load_model": "actlab.models.loading",
    "Run": "actlab.runs",
    "Steer": "actlab.steering.apply", "Mix": "actlab.steering.apply", "FeatureEdit": "actlab.sae.features",
}
_SUBMODULES = ("analysis", "data", "finetune", "hooks", "jobs", "lens", "lfp", "models", "report", "runs", "sae",
               "steering")

if TYPE_CHECKING:  # for type checkers and IDEs
    from .errors import ActlabError
    from .hooks import Activations, HookPoint, HookSession, count_hooks
    from .hooks.additions import Add
    from .hooks.directions import ProjectOut, Rotate
    from .hooks.interventions import Edits, Hook, Intervention, Replace
    from .hooks.positions import Boundary
    from .lens import LensResult, logit_lens
    from .models import ArchAdapter, Model, load_model, register_adapter
    from .models.unembed import Unembed
    from .runs import Run


def __getattr__(name: str) -> Any:
    if name == "wrap":
        return importlib.import_module("actlab.models.model").Model.wrap
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"actlab.{name}")
    raise AttributeError(f"module 'actlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_SUBMODULES, "wrap"])


__all__ = [
    "Activations", "ActlabError", "Add", "ArchAdapter", "Boundary", "Edits", "FeatureEdit", "Hook", "HookPoint",
    "HookSession", "Intervention", "LensResult", "Mix", "Model", "ProjectOut", "Replace", "Rotate", "Run", "Steer",
    "Unembed", "__version__", "count_hooks", "load_model", "logit_lens", "register_adapter", "wrap",
]
