"""Small helpers shared by the jobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..models import Model, load_model
from ..steering.vector import SteeringVector

ModelLike = Model | str
VectorLike = SteeringVector | str | os.PathLike[str]


def as_model(model: ModelLike, **load_kw: Any) -> Model:
    """A loaded :class:`Model`, or the name/path of one to load (``dtype``, ``device``... as keywords)."""
    if isinstance(model, Model):
        return model
    return load_model(str(model), **{k: v for k, v in load_kw.items() if v is not None})


def as_vector(vector: VectorLike) -> SteeringVector:
    return vector if isinstance(vector, SteeringVector) else SteeringVector.load(Path(vector))


def name_of(x: Any) -> str:
    """How a model or file argument is recorded in run.json."""
    if isinstance(x, Model):
        return x.name
    return str(x)
