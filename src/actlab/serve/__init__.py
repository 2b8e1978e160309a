"""``actlab serve``: a local playground in the browser (steered vs default generation, the logit lens per
layer and position, SAE features per token) over the library's own interventions and results. Needs the
``serve`` extra (``pip install actlab[serve]``: Starlette + uvicorn)."""

from __future__ import annotations

from .session import Playground

__all__ = ["Playground", "create_app", "serve"]


def __getattr__(name: str):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
