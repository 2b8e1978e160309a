"""Small helpers shared by the jobs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data import read_texts
from ..models import Model, load_model
from ..steering.vector import SteeringVector

ModelLike = Model | str
VectorLike = SteeringVector | str | os.PathLike[str]
TextsLike = str | os.PathLike[str] | Sequence[str]  # a text dataset file (or folder), or the texts already read


def as_model(model: ModelLike, **load_kw: Any) -> Model:
    """A loaded :class:`Model`, or the name/path of one to load (``dtype``, ``device``... as keywords)."""
    if isinstance(model, Model):
        return model
    return load_model(str(model), **{k: v for k, v in load_kw.items() if v is not None})


def as_vector(vector: VectorLike) -> SteeringVector:
    return vector if isinstance(vector, SteeringVector) else SteeringVector.load(Path(vector))


def as_texts(data: TextsLike, *, field: str | None = None, limit: int | None = None) -> list[str]:
    """Texts from a dataset file, or the texts themselves (read earlier, before a model loaded)."""
    if isinstance(data, (str, os.PathLike)):
        return read_texts(data, field=field, limit=limit)
    return list(data)[:limit] if limit else list(data)


class FromFile(list):
    """Items read from a file before a model loaded (so a bad file fails first), remembering which file: run
    records name it rather than "N items"."""

    def __init__(self, items: Any, source: str | os.PathLike[str]):
        super().__init__(items)
        self.source = str(source)


def name_of(x: Any) -> str:
    """How a model, a file argument or data read beforehand is recorded in run.json."""
    if isinstance(x, Model):
        return x.name
    if isinstance(x, SteeringVector):
        return str(x.origin.get("file", "a vector given in memory"))
    if isinstance(getattr(x, "source", None), str) and x.source:
        return x.source
    if isinstance(x, (list, tuple)):
        return f"{len(x)} items given in memory"
    return str(x)
