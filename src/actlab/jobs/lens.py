"""The logit-lens job: decode hook points for a batch of prompts, optionally writing the JSON result and an
offline HTML page (target-probability heatmap + top-token tables)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..lens import LensResult, logit_lens
from ..report import Page
from ..report.lens import lens_tables, target_heatmap
from ..runs import write_json
from .common import ModelLike, as_model

DEFAULT_POINTS = "resid_post,attn_out,mlp_out"


def lens(model: ModelLike, prompts: Sequence[str], *, points: str | Sequence[str] = DEFAULT_POINTS,
         position: int = -1, top_k: int = 5, target: str | int | None = None, chat: bool = False,
         json_out: str | os.PathLike[str] | None = None, html_out: str | os.PathLike[str] | None = None
         ) -> LensResult:
    """Logit lens on ``prompts`` (wrapped in the chat template with ``chat``); a target given as digits is a
    token id."""
    m = as_model(model)
    texts = [m.chat_prompt(p) for p in prompts] if chat else list(prompts)
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    res = logit_lens(m, texts, points=points, position=position, top_k=top_k, target=target)
    if json_out:
        write_json(json_out, res.to_dict())
    if html_out:
        page = Page(f"Logit lens: {m.name}")
        if res.target_probs is not None:
            with tempfile.TemporaryDirectory() as tmp:
                png = target_heatmap(res, Path(tmp) / "lens.png")
                page.image(png.read_bytes(), "target probability per layer and point")
        lens_tables(page, res, top_k=top_k)
        page.write(html_out)
    return res
